"""Serving code that never imports gRPC or the generated protos: config, plain errors, the tensor codec,
the ONNX model, metrics, logging, the stream responder and memory hand-back. The gRPC side is
`coded_invnet.rpc`."""
