"""Client SDK for the Coded-InvNet frontend: `Client` (blocking) and `AsyncClient` (asyncio).

    from coded_invnet.client import Client
    with Client("127.0.0.1:8001", model="mnist") as client:
        p = client.predict(image)  # image: float32 (1, 28, 28)
        print(p.label, p.probabilities.max(), p.reconstructed, p.coding_mode, p.latency_ms)
    Client("frontend:8001", tls=TlsOptions(ca_file="ca.pem"))  # TLS; cert_file/key_file for mutual TLS

Note: this imports the `inference` protobuf package, as tritonclient.grpc does; use one of the two per
process.
"""

from coded_invnet.client.aio import AsyncClient
from coded_invnet.client.core import Prediction, PredictionError, StreamResult
from coded_invnet.client.sync import Client
from coded_invnet.serving.channels import TlsOptions

__all__ = ["AsyncClient", "Client", "Prediction", "PredictionError", "StreamResult", "TlsOptions"]
