"""Generated gRPC stubs for protos/*.proto (regenerate with `make proto`)."""
