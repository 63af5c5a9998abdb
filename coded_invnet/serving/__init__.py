"""Shared serving infrastructure: config, errors, tensors, ONNX runtime, metrics, logging, gRPC plumbing.

Modules without gRPC (config, errors, tensors, onnx_model, metrics, structured_logging) hold the domain
side; grpc_errors, health, channels, lifecycle and batch_service are the only ones that import grpc.
"""
