ExportResult = export_onnx = None
