"""int4 for ONNX Runtime's MatMulNBits: the formats an export asks for, and the quantizer."""
