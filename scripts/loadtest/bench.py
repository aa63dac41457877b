#!/usr/bin/env python3
"""The load-test run behind scripts/bench.sh (see --help).
The code: scripts/trendstory_tools/loadtest/bench.py."""
import sys

from trendstory_tools.loadtest.bench import main

if __name__ == "__main__":
    sys.exit(main())
