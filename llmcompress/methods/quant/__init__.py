"""Shared weight-quantization pieces: the integer grid maths, the per-module record of
what was quantized, and the writers of quantized formats (compressed-tensors, GPTQ v1)."""
