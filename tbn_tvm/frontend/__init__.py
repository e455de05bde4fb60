"""Model importers (ONNX today)."""
