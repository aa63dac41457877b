"""TrendStory's Python tools: model export to ONNX, int4 quantization, GGUF import, quality
measurement. The scripts in scripts/ (export_onnx.py, gguf_import.py, gguf_dequant.py,
quant_quality.py, ...) are thin entry points into this package; scripts/python-env.sh installs
it into .venv (editable), so tests and the load-test tools import it like any package.

Layout, one concept a module:
  cli/                  one module per command: its options and main()
  export.py             the export driver: checkpoint -> model folder, manifest.json last
  export_options.py     the exporter's command-line options (also parsed by the GGUF import)
  current_export.py     whether a folder already holds the export asked for (--check-current)
  safetensors_io.py     safetensors read and written without torch (bf16 as uint16 bits)
  llama_checkpoint.py   a Llama checkpoint's dimensions, tensor names and shapes, RoPE tables
  int4/formats.py       the int4 formats per matrix kind (--quant, DEFAULT_QUANT, manifest)
  int4/quantizer.py     the quantizer: weights -> MatMulNBits codes, scales, zero points
  graph/builder.py      ONNX nodes and initializers, external data aligned for mmap
  graph/linear.py       linear layers: MatMulNBits (quantized or native blocks) or MatMul
  graph/decoder.py      the Llama decoder graph, attention left to a contract:
  graph/attention_contract.py   what a contract decides (inputs, KV cache, attention nodes)
  graph/explicit_contract.py    --attention explicit: the optimum decoder-with-past contract
  graph/packed_contract.py      --attention packed: PACKED_CONTRACT (GroupQueryAttention)
  graph/slots_contract.py       --attention slots: SLOTS_CONTRACT (the engine's SlotAttention)
  graph/linear_only.py  --linear-only: the int4 matmuls alone (a benchmark baseline)
  tiny_tokenizer.py     the tiny preset's self-trained BPE tokenizer
  random_init.py        --random-init checkpoints (tiny and TinyLlama shapes)
  golden.py             golden.json (greedy outputs by stock ONNX Runtime), forward passes
  gguf_import/          a llama.cpp GGUF as a model folder: the file, config, tokenizer,
                        weights (native blocks), the folder; dequant_check.py for the
                        quality table's llama.cpp rows
  quant_quality.py      KL and top-1 agreement of a quantized export against fp32
  loadtest/             the load tests behind scripts/bench.sh (run, report, traffic mix) and
                        hf_to_gguf.py, run as a file in the llama-server peer's own venv
  digests.py, paths.py, log.py   file sha256, the repository's paths, progress lines
"""
