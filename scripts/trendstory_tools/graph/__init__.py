"""The ONNX graphs an export writes: the builder, linear layers, the decoder with one module per
attention contract (--attention), and the linear-only benchmark baseline."""
