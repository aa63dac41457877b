#!/usr/bin/env python3
"""The load-test report (BENCHMARKS.md section, charts) from a results JSON.
The code: scripts/trendstory_tools/loadtest/report.py."""
import sys

from trendstory_tools.loadtest.report import main

if __name__ == "__main__":
    sys.exit(main())
