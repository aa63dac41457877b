#!/usr/bin/env python3
"""Where a growing RSS lives, sampled from /proc/PID/smaps (see --help).
The code: scripts/trendstory_tools/loadtest/rss_by_mapping.py."""
import sys

from trendstory_tools.loadtest.rss_by_mapping import main

if __name__ == "__main__":
    sys.exit(main())
