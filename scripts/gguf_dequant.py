#!/usr/bin/env python3
"""A llama.cpp GGUF dequantized to fp32 and exported, a row of the int4 quality table (see
--help). The code: scripts/trendstory_tools/cli/gguf_dequant.py and
gguf_import/dequant_check.py."""
import sys

from trendstory_tools.cli.gguf_dequant import main

if __name__ == "__main__":
    sys.exit(main())
