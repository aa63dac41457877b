"""The load tests behind scripts/bench.sh: the run (bench.py), the report, the web page's traffic
mix, memory sampling, and the checkpoint-to-GGUF converter for the llama-server peer."""
