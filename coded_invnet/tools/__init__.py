"""Command-line tools around the product: the local launcher, demo, benchmarks, chaos runner, evaluation,
ONNX export and the open-loop load generator. The library (models, serving, client) never imports them."""
