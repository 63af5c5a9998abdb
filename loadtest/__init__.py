"""Load generation: Locust gRPC users (locustfile.py) and an open-loop Poisson generator (openloop.py)."""
