"""Open Inference Protocol compatibility: an unmodified tritonclient.grpc client talks to our frontend.

tritonclient registers its own `inference` protobuf package, which clashes with ours in one process,
so the client runs in a subprocess and prints what it got as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from frontend_helpers import MODEL_NAME, random_images, reference_logits

from coded_invnet.tools.launcher import System

PROBE = r"""
import json, queue, sys
import numpy as np
import tritonclient.grpc as triton

url, model, images_path = sys.argv[1:]
images = np.load(images_path)
client = triton.InferenceServerClient(url)
report = {
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "model_ready": client.is_model_ready(model),
    "metadata": client.get_model_metadata(model, as_json=True),
}
inputs = [triton.InferInput("x", list(images.shape), "FP32")]
inputs[0].set_data_from_numpy(images)
outputs = [triton.InferRequestedOutput("logits"), triton.InferRequestedOutput("reconstructed")]
result = client.infer(model, inputs, outputs=outputs, request_id="unary")
report["logits"] = result.as_numpy("logits").tolist()
report["reconstructed"] = result.as_numpy("reconstructed").tolist()
report["parameters"] = result.get_response(as_json=True)["parameters"]

answers = queue.Queue()
client.start_stream(callback=lambda result, error: answers.put((result, error)))
for i in range(3):
    client.async_stream_infer(model, inputs, request_id=f"s{i}")
streamed = [answers.get(timeout=30) for _ in range(3)]
client.stop_stream()
report["stream"] = sorted(
    [r.get_response().id, r.as_numpy("logits").tolist()] for r, e in streamed if e is None
)
report["stream_errors"] = [str(e) for r, e in streamed if e is not None]
print(json.dumps(report))
"""


def test_tritonclient_calls_our_frontend(coded_system: System, model_dir: Path, tmp_path: Path) -> None:
    images = random_images(3)
    np.save(tmp_path / "images.npy", images)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, coded_system.frontend.target, MODEL_NAME, str(tmp_path / "images.npy")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["live"] and report["ready"] and report["model_ready"]
    metadata = report["metadata"]
    assert metadata["name"] == MODEL_NAME
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "1", "28", "28"]}]
    assert {o["name"] for o in metadata["outputs"]} == {"logits", "probabilities", "class", "reconstructed"}
    expected = reference_logits(model_dir, images)
    np.testing.assert_allclose(report["logits"], expected, rtol=1e-4, atol=1e-4)
    assert report["reconstructed"] == [False] * 3
    assert report["parameters"]["coding_mode"] == {"string_param": "coded-invnet"}
    assert report["parameters"]["reconstructed"] == {"bool_param": False}
    assert not report["stream_errors"]
    assert [request_id for request_id, _ in report["stream"]] == ["s0", "s1", "s2"]
    for _, logits in report["stream"]:
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
