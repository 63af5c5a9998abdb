"""Worker service: runs one ONNX model (data or parity worker) over batches, with fault injection."""
