#!/usr/bin/env python3
"""Export a Hugging Face Llama checkpoint to the ONNX graph the TrendStory engine runs (see
--help). The code is the package scripts/trendstory_tools/: the command line in
cli/export_onnx.py, the graph contracts in graph/ (PACKED_CONTRACT: packed_contract.py,
SLOTS_CONTRACT: slots_contract.py, the optimum one: explicit_contract.py)."""
import sys

from trendstory_tools.cli.export_onnx import main

if __name__ == "__main__":
    sys.exit(main())
