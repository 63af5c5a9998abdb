"""The gRPC side of the services, shared by all of them: the server host (health, graceful shutdown,
metrics endpoint), the interceptor with the one table from domain errors to status codes, client
channels (deadlines, retries, TLS), proto ↔ array conversion, the multiplexed batch stream (client) and
the batch processor behind the Batch RPCs (server). Only code in this package, the services' `server.py`
and `servicer.py`, the frontend's backends, the client SDK and the tools import grpc or the generated
protos; `coded_invnet.serving` never does."""
