"""Every model (and dataset) the tests build, in one place: small ONNX graphs
(`onnx_basic`), graphs with the shapes real exporters write (`onnx_zoo`, `sequences`), a
model with one quantization-sensitive layer (`sensitive`), and PyTorch programs and archives
(`torch_programs`)."""
