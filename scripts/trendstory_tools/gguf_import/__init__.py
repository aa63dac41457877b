"""A llama.cpp GGUF imported as a model folder: the file, its config, tokenizer and weights, the
folder written; and the dequantization check of the int4 quality table's llama.cpp rows."""
