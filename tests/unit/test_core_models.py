"""Contracts of the networks and the coding math: invertibility, Lipschitz bounds, permutation invariance,
cost budgets, exact (oracle) decoding, ONNX parity."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from helpers import REPO_ROOT

from coded_invnet import coding
from coded_invnet.checkpoint import (
    ModelFileError,
    load_checkpoint,
    load_classifier,
    load_encoder,
    load_parm,
    save_checkpoint,
)
from coded_invnet.data import IMAGE_SHAPES, SHIPPED_DATASETS, load_dataset
from coded_invnet.flops import count_macs
from coded_invnet.models.classifier import ClassifierSpec, InvNetClassifier
from coded_invnet.models.encoder import EncoderSpec, FusionEncoder
from coded_invnet.models.invresnet import (
    ROUND_TRIP_ATOL,
    Invertible,
    InvertibleResNet,
    ResidualBlock,
    SpectralConv2d,
    Squeeze,
)
from coded_invnet.tools.export import export_dataset
from coded_invnet.training.encoder import load_widened
from coded_invnet.training.recipe import base_spec

AnyModule = TypeVar("AnyModule", bound=torch.nn.Module)
MODELS = REPO_ROOT / "models"
SHIPPED = MODELS / "mnist"


@pytest.fixture(scope="module")
def mnist_images() -> torch.Tensor:
    return torch.from_numpy(load_dataset("mnist").test.images[:64])


def shipped_or_smoke(request: pytest.FixtureRequest) -> Path:
    """The committed models; a smoke training run only where they are missing (it takes minutes)."""
    if (SHIPPED / "classifier.pt").is_file():
        return SHIPPED
    return Path(request.getfixturevalue("smoke_models"))


# ------------------------------------------------------------------ invertible body


@pytest.mark.parametrize("trained", [False, True])
def test_round_trip_on_real_images(
    trained: bool, mnist_images: torch.Tensor, request: pytest.FixtureRequest
) -> None:
    if trained:
        g = load_classifier(shipped_or_smoke(request) / "classifier.pt").g
    else:
        torch.manual_seed(0)
        g = settled(InvNetClassifier(ClassifierSpec()).g, mnist_images[:8])
    with torch.no_grad():
        z = g(mnist_images)
        x_back = g.inverse(z)
    assert z.shape == (64, 784), "z has as many elements as x"
    assert (x_back - mnist_images).abs().max().item() <= ROUND_TRIP_ATOL


def settled(module: AnyModule, example: torch.Tensor) -> AnyModule:
    """``module`` in eval mode after enough training forwards for the power iterations to hold the bound."""
    module.train()
    with torch.no_grad():
        for _ in range(20):
            module(example)
    return module.eval()


def invertible_cases() -> dict[str, tuple[Invertible, torch.Tensor]]:
    """One instance of every invertible module type of models/invresnet.py, with an input it is for."""
    torch.manual_seed(3)
    spec = ClassifierSpec()
    x = torch.rand(8, 16, 7, 7)
    block = settled(ResidualBlock(16, spec.hidden[1], (7, 7), spec.coeff), x)
    images = torch.rand(8, *spec.image_shape)
    g = settled(InvertibleResNet(spec.image_shape, spec.blocks_per_stage, spec.hidden, spec.coeff), images)
    return {
        "Squeeze": (Squeeze(), torch.rand(8, 4, 14, 14)),
        "ResidualBlock": (block, 2 * x - 1),
        "InvertibleResNet": (g, images),
    }


@pytest.mark.parametrize("name", ["Squeeze", "ResidualBlock", "InvertibleResNet"])
def test_every_invertible_module_round_trips(name: str) -> None:
    module, x = invertible_cases()[name]
    assert isinstance(module, Invertible), f"{name} does not honour the Invertible protocol"
    with torch.no_grad():
        y = module.forward(x)
        back = module.inverse(y)
    assert x.dtype == y.dtype == back.dtype == torch.float32
    assert back.shape == x.shape
    assert torch.allclose(back, x, atol=ROUND_TRIP_ATOL), f"{name}: max error {(back - x).abs().max():.2e}"
    if name != "Squeeze":  # a non-trivial map: the round trip is not passing x through
        assert (y.reshape(x.shape) - x).abs().max() > 100 * ROUND_TRIP_ATOL


def test_spectral_conv_keeps_operator_norm_below_coeff() -> None:
    torch.manual_seed(0)
    conv = SpectralConv2d(4, 32, 3, (14, 14), coeff=0.8)
    with torch.no_grad():
        conv.conv.weight.mul_(10)  # far above the bound before normalisation
    conv.train()
    for _ in range(50):
        conv(torch.rand(2, 4, 14, 14))
    conv.eval()
    w = conv.normalised_weight().detach()
    u = torch.randn(1, 4, 14, 14)  # independent power iteration on the conv operator
    for _ in range(200):
        v = F.conv2d(u, w, padding=1)
        u = F.conv_transpose2d(v / v.norm(), w, padding=1)
        u = u / u.norm()
    sigma = F.conv2d(u, w, padding=1).norm().item()
    assert sigma <= 0.8 * 1.02, f"operator norm {sigma:.3f} exceeds the coefficient"


def test_residual_branch_is_a_contraction() -> None:
    torch.manual_seed(1)
    block = ResidualBlock(16, 64, (7, 7), coeff=0.9)
    block.train()
    for _ in range(30):
        block(torch.randn(4, 16, 7, 7))
    block.eval()
    x, y = torch.randn(64, 16, 7, 7), torch.randn(64, 16, 7, 7)
    with torch.no_grad():
        ratio = (block.f(x) - block.f(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert ratio.max().item() < 0.9**3 + 1e-3


# ------------------------------------------------------------------ encoder and head


def test_encoder_is_permutation_invariant() -> None:
    torch.manual_seed(2)
    enc = FusionEncoder(EncoderSpec(k=4))
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.1 * torch.randn_like(p))  # a non-trivial correction
        x = torch.rand(3, 4, 1, 28, 28)
        reference = enc(x)
        for perm in itertools.permutations(range(4)):
            assert torch.allclose(enc(x[:, list(perm)]), reference, atol=1e-5)


def test_untrained_encoder_is_the_pixel_mean() -> None:
    x = torch.rand(2, 10, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(FusionEncoder(EncoderSpec(k=10))(x), x.mean(1), atol=1e-6)


@pytest.mark.parametrize(("k", "r"), [(4, 2), (10, 2), (4, 3), (10, 3)])
def test_parity_encoder_shapes_and_start(k: int, r: int) -> None:
    """With r parities: (B, r, C, H, W), untrained each parity is its pixel combination Σ_i A[m, i] x_i,
    and parity 0 is exactly the one-parity encoder whose weights it loads."""
    x = torch.rand(3, k, 1, 28, 28)
    enc = FusionEncoder(EncoderSpec(k=k, parities=r))
    a = torch.as_tensor(coding.parity_coefficients(k, r), dtype=torch.float32)
    one = FusionEncoder(EncoderSpec(k=k))
    with torch.no_grad():
        assert torch.allclose(enc(x), torch.einsum("mk,bkchw->bmchw", a, x), atol=1e-6)
        for p in one.parameters():
            p.add_(0.1 * torch.randn_like(p))
        result = enc.load_state_dict(one.state_dict(), strict=False)
        assert not result.unexpected_keys and all(key.startswith("extra.") for key in result.missing_keys)
        out = enc(x)
        assert out.shape == (3, r, 1, 28, 28)
        assert torch.allclose(out[:, 0], one(x), atol=1e-5)
    shipped = count_macs(FusionEncoder(EncoderSpec(k=k)), torch.rand(1, k, 1, 28, 28))
    worker = count_macs(InvNetClassifier(ClassifierSpec()), torch.rand(1, 1, 28, 28))
    assert count_macs(enc, torch.rand(1, k, 1, 28, 28)) <= shipped + 0.07 * (r - 1) * worker


def test_a_wider_extra_kernel_starts_as_the_narrower_encoder() -> None:
    """load_widened puts a 1×1 kernel at the centre of the wider one: the same function to start from."""
    x = torch.rand(2, 4, 1, 28, 28)
    narrow = FusionEncoder(EncoderSpec(k=4, parities=2))
    wide = FusionEncoder(EncoderSpec(k=4, parities=2, extra_kernel=3))
    with torch.no_grad():
        for p in narrow.parameters():
            p.add_(0.1 * torch.randn_like(p))
        load_widened(wide, narrow.state_dict())
        assert wide.state_dict()["extra.0.0.weight"].shape[-2:] == (3, 3)
        assert torch.allclose(wide(x), narrow(x), atol=1e-5)
        assert not torch.allclose(FusionEncoder(EncoderSpec(k=4, parities=2, extra_kernel=3))(x), narrow(x))


def test_one_parity_encoder_is_unchanged() -> None:
    """r = 1 (the default) keeps the shipped encoders' state-dict keys and (B, C, H, W) output."""
    enc = FusionEncoder(EncoderSpec(k=4))
    keys = {
        "branch.0.weight",
        "branch.0.bias",
        "fuse.0.weight",
        "fuse.0.bias",
        "fuse.2.weight",
        "fuse.2.bias",
    }
    assert set(enc.state_dict()) == keys
    assert enc(torch.rand(2, 4, 1, 28, 28)).shape == (2, 1, 28, 28)


def test_encoder_rejects_wrong_group_size() -> None:
    with pytest.raises(AssertionError, match="expected"):
        FusionEncoder(EncoderSpec(k=4))(torch.rand(2, 3, 1, 28, 28))


def test_compute_budgets() -> None:
    model = InvNetClassifier(ClassifierSpec())
    worker = count_macs(model, torch.rand(1, 1, 28, 28))
    head = count_macs(model.h, torch.rand(1, 784))
    assert head <= 0.05 * worker, "the head must stay light: decoding runs only h"
    encoder = count_macs(FusionEncoder(EncoderSpec(k=10)), torch.rand(1, 10, 1, 28, 28))
    assert encoder <= worker, "F_10 must cost at most one worker query per group"
    assert (worker + encoder) / (10 * worker) <= 0.20


# ------------------------------------------------------------------ coding math


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_decode_functions_agree(lib: str) -> None:
    """decode_all and decode_missing rebuild every member of a group from the exact parity, in numpy
    and torch alike (the decoder service runs numpy, training and evaluation torch)."""
    rng = np.random.default_rng(0)
    outputs = rng.normal(size=(5, 3, 7)).astype(np.float32)  # (k, B, D)
    parity = outputs.mean(0)  # (B, D)
    for missing in range(5):
        available = np.delete(outputs, missing, axis=0)  # (k-1, B, D)
        if lib == "torch":
            got = coding.decode_missing(torch.from_numpy(parity), torch.from_numpy(available), 5).numpy()
        else:
            got = coding.decode_missing(parity, available, 5)
        np.testing.assert_allclose(got, outputs[missing], atol=1e-5)
    if lib == "torch":
        all_ = coding.decode_all(torch.from_numpy(parity), torch.from_numpy(outputs)).numpy()
    else:
        all_ = coding.decode_all(parity, outputs)
    np.testing.assert_allclose(all_, outputs, atol=1e-5)


def test_decode_rejects_mismatched_inputs() -> None:
    with pytest.raises(coding.CodingError, match="expected available"):
        coding.decode_missing(np.zeros((2, 3)), np.zeros((4, 2, 3)), k=4)
    with pytest.raises(coding.CodingError, match="k must be"):
        coding.decode_missing(np.zeros((2, 3)), np.zeros((0, 2, 3)), k=1)


def test_oracle_parity_decodes_like_the_base_model(request: pytest.FixtureRequest) -> None:
    """With the exact parity g⁻¹(mean z), decoded predictions agree with the base model (k=10)."""
    model = load_classifier(shipped_or_smoke(request) / "classifier.pt")
    images = torch.from_numpy(load_dataset("mnist").test.images[:500]).reshape(50, 10, 1, 28, 28)
    with torch.no_grad():
        logits, z = model(images.flatten(0, 1))
        z = z.reshape(50, 10, -1)
        z_p = model.g(model.g.inverse(z.mean(1)))
        decoded = coding.decode_all(z_p, z.transpose(0, 1))  # (k, groups, D)
        agree = (model.h(decoded).argmax(-1) == logits.reshape(50, 10, -1).argmax(-1).T).float().mean()
    assert agree.item() >= 0.999


# ------------------------------------------------------------------ ONNX parity


def test_onnx_matches_torch_on_real_inputs(smoke_models: Path, mnist_images: torch.Tensor) -> None:
    export_dataset(smoke_models)
    base = load_classifier(smoke_models / "classifier.pt")
    x = mnist_images[:32]
    groups = mnist_images[:32].reshape(16, 2, 1, 28, 28)

    def run(name: str, array: torch.Tensor) -> list[np.ndarray]:
        session = ort.InferenceSession(str(smoke_models / name), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: array.numpy()})

    with torch.no_grad():
        logits, z = base(x)
        expected = {
            "worker.onnx": (x, [logits, z]),
            "head.onnx": (z, [logits]),
            "encoder_k2.onnx": (groups, [load_encoder(smoke_models / "encoder_k2.pt")(groups)]),
            "encoder_k2_r2.onnx": (groups, [load_encoder(smoke_models / "encoder_k2_r2.pt")(groups)]),
            "parm_encoder_k2.onnx": (groups, [groups.mean(1)]),
            "parm_k2.onnx": (groups.mean(1), [load_parm(smoke_models / "parm_k2.pt")(groups.mean(1))]),
        }
    for name, (inputs, outputs) in expected.items():
        got = run(name, inputs)
        for g, e in zip(got, outputs, strict=True):
            assert np.abs(g - e.numpy()).max() <= 1e-4, name


# ------------------------------------------------------------------ model files


@pytest.mark.parametrize("dataset", SHIPPED_DATASETS)
def test_spec_defaults_are_the_shipped_model(dataset: str) -> None:
    """ClassifierSpec's defaults (with the data set's image shape) are what models/ ships."""
    if not (MODELS / dataset / "classifier.pt").is_file():
        pytest.skip(f"no shipped {dataset} classifier")
    expected = ClassifierSpec(image_shape=IMAGE_SHAPES[dataset])
    stored_specs = {"classifier": "classifier", "classifier_nomixup": "classifier", "parm_sn_k10": "parm"}
    for name, kind in stored_specs.items():
        stored = load_checkpoint(MODELS / dataset / f"{name}.pt", kind)
        assert ClassifierSpec.from_json(stored["spec"]) == expected, name
    manifest = json.loads((MODELS / dataset / "manifest.json").read_text())
    assert ClassifierSpec.from_json(manifest["classifier_spec"]) == expected
    assert base_spec(dataset) == expected, "what `make train` builds is the shipped model"


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("payload", ["callable", "object"])
def test_checkpoint_carrying_code_is_refused(payload: str, tmp_path: Path) -> None:
    """Model files are read with weights_only=True: a pickled callable or object is refused, unrun."""
    marker = tmp_path / "ran"
    smuggled = _RunsCodeWhenUnpickled(marker) if payload == "object" else print
    path = tmp_path / "classifier.pt"
    spec = ClassifierSpec()
    state = InvNetClassifier(spec).state_dict()
    save_checkpoint(path, "classifier", state, spec=spec.to_json(), extra=smuggled)
    with pytest.raises(ModelFileError, match="cannot read model file"):
        load_classifier(path)
    assert not marker.exists(), "unpickling ran code from the file"
