"""The command lines: one module per command, its options and main(); scripts/*.py call them."""
