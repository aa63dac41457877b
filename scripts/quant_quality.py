#!/usr/bin/env python3
"""int4 quality against fp32: next-token agreement and KL divergence (see --help). The code:
scripts/trendstory_tools/quant_quality.py and cli/quant_quality.py."""
import sys

from trendstory_tools.cli.quant_quality import main

if __name__ == "__main__":
    sys.exit(main())
