#!/usr/bin/env python3
"""A llama.cpp GGUF as a TrendStory model folder (see --help; usually run through
scripts/import-gguf.sh). The code: scripts/trendstory_tools/gguf_import/ and
cli/gguf_import.py."""
import sys

from trendstory_tools.cli.gguf_import import main

if __name__ == "__main__":
    sys.exit(main())
