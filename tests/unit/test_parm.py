"""ParM's parity networks: every architecture loads by its spec's ``arch``, exports to ONNX with the
same function, and trains; the shipped files are the architectures their names say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import REPO_ROOT

from coded_invnet.checkpoint import load_checkpoint, load_parm, save_checkpoint
from coded_invnet.data import IMAGE_SHAPES, SHIPPED_DATASETS
from coded_invnet.flops import count_macs
from coded_invnet.models.classifier import ClassifierSpec, InvNetClassifier
from coded_invnet.models.invresnet import SpectralConv2d
from coded_invnet.models.parm import PARM_ARCHS, SN_ARCH, ParityModel, arch_of, parity_spec
from coded_invnet.models.parm_cnn import ParityCNN, ParityCNNSpec
from coded_invnet.tools.export import export_module
from coded_invnet.training import cli
from coded_invnet.training.loop import RunConfig, epoch_loop
from coded_invnet.training.parm import initial_parity_network

MODELS = REPO_ROOT / "models"


@pytest.fixture(scope="module")
def base() -> InvNetClassifier:
    torch.manual_seed(0)
    return InvNetClassifier(ClassifierSpec()).eval()


def _has_spectral_norm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, SpectralConv2d) for m in model.modules())


@pytest.mark.parametrize("arch", PARM_ARCHS)
def test_parity_network_round_trips_through_its_file(
    arch: str, base: InvNetClassifier, tmp_path: Path
) -> None:
    parity = initial_parity_network(parity_spec(arch, base.spec), base).eval()
    spec = parity_spec(arch, base.spec)
    path = tmp_path / "parm.pt"
    save_checkpoint(path, "parm", parity.state_dict(), spec=spec, k=2, encoder="mean")
    loaded = load_parm(path)
    assert type(loaded) is type(parity)
    assert _has_spectral_norm(loaded) == (arch == SN_ARCH), "only invnet-sn keeps the Lipschitz bound"
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(loaded(x), parity(x), atol=1e-6)


def test_a_spec_without_arch_is_the_spectrally_normalised_base_architecture(
    base: InvNetClassifier, tmp_path: Path
) -> None:
    """Files written before ``arch`` existed (parm_sn_k*.pt) store the bare ClassifierSpec."""
    old = ParityModel(base.spec)
    old.net.load_state_dict(base.state_dict())
    path = tmp_path / "parm_sn.pt"
    save_checkpoint(path, "parm", old.eval().state_dict(), spec=base.spec.to_json(), k=10, encoder="mean")
    assert arch_of(load_checkpoint(path, "parm")["spec"]) == SN_ARCH
    loaded = load_parm(path)
    assert isinstance(loaded, ParityModel) and _has_spectral_norm(loaded)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(loaded(x), base(x)[0], atol=1e-5)


def test_unconstrained_base_architecture_starts_as_the_base(base: InvNetClassifier) -> None:
    parity = initial_parity_network(parity_spec("invnet", base.spec), base).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(parity(x), base(x)[0], atol=1e-4)


@pytest.mark.parametrize("arch", ["cnn", "invnet"])
def test_parity_network_onnx_matches_torch(arch: str, base: InvNetClassifier, tmp_path: Path) -> None:
    parity = initial_parity_network(parity_spec(arch, base.spec), base)
    parity.train()
    with torch.no_grad():  # batch norm statistics away from their initial values
        parity(torch.rand(64, 1, 28, 28) * 2)
    parity.eval()
    x = torch.rand(8, 1, 28, 28)
    path = export_module(parity, torch.rand(2, 1, 28, 28), tmp_path / "parm.onnx", "x", ["logits"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        assert np.abs(got - parity(x).numpy()).max() <= 1e-4


def test_parity_cnn_costs_about_one_worker_query(base: InvNetClassifier) -> None:
    worker = count_macs(base, torch.rand(1, 1, 28, 28))
    parity = count_macs(ParityCNN(ParityCNNSpec()), torch.rand(1, 1, 28, 28))
    assert 0.9 * worker <= parity <= 1.1 * worker


def test_parity_network_training_step_runs(tmp_path: Path) -> None:
    args = ["parm", "--dataset", "mnist", "--k", "4", "--epochs", "1", "--train-limit", "256"]
    args += ["--batch-size", "32", "--models-dir", str(tmp_path / "m")]
    args += ["--checkpoints-dir", str(tmp_path / "c")]
    args += ["--base", str(_tiny_base(tmp_path))]
    assert cli.main(args) == 0
    ckpt = load_checkpoint(tmp_path / "m" / "mnist" / "parm_k4.pt", "parm")
    assert arch_of(ckpt["spec"]) == "cnn" and ckpt["k"] == 4
    assert 0 <= ckpt["val_recovery"] <= 1 and 0 <= ckpt["val_degraded_accuracy"] <= 1
    assert (tmp_path / "c" / "mnist" / "classifier.logits.pt").is_file(), "the base logits are cached"
    assert cli.main([*args, "--name", "parm_again"]) == 0  # the second run reads the cache
    # --init continues from a file: at learning rate 0 the weights written are the file's (batch-norm
    # statistics still move)
    first = dict(load_parm(tmp_path / "m" / "mnist" / "parm_k4.pt").named_parameters())
    assert (
        cli.main([*args, "--name", "parm_cont", "--lr", "0", "--init", str(tmp_path / "m/mnist/parm_k4.pt")])
        == 0
    )
    continued = dict(load_parm(tmp_path / "m" / "mnist" / "parm_cont.pt").named_parameters())
    assert all(torch.equal(first[key], continued[key]) for key in first)
    # a larger parity CNN than the shipped one, stored with its sizes
    assert cli.main([*args, "--name", "parm_big", "--parm-widths", "8,16,24", "--parm-hidden", "40"]) == 0
    big = load_parm(tmp_path / "m" / "mnist" / "parm_big.pt")
    assert isinstance(big, ParityCNN) and (big.spec.widths, big.spec.hidden) == ((8, 16, 24), 40)


def test_sizes_that_are_not_widths_are_refused_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["parm", "--parm-widths", "8,16"])
    message = "--parm-widths: expected 3 positive comma-separated integers, got '8,16'"
    assert message in capsys.readouterr().err


def _tiny_base(folder: Path) -> Path:
    path = folder / "classifier.pt"
    spec = ClassifierSpec(blocks_per_stage=(1, 1), hidden=(8, 8), head_hidden=16)
    save_checkpoint(path, "classifier", InvNetClassifier(spec).state_dict(), spec=spec.to_json())
    return path


def test_epoch_loop_stops_when_validation_stops_improving(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 1)
    cfg = RunConfig("mnist", tmp_path / "m", tmp_path / "c", 10, 4, 1e-3, 0, None, "cpu")
    scores = iter([0.5, 0.6, 0.55, 0.58, 0.9, 0.9])

    def step(epoch: int, i: int) -> torch.Tensor:
        return model(torch.rand(4, 2)).pow(2).mean()

    _, best, history = epoch_loop("stop", cfg, model, step, 2, lambda: next(scores), patience=2)
    assert best == 0.6 and [h["epoch"] for h in history] == [1, 2, 3, 4]


@pytest.mark.parametrize("dataset", SHIPPED_DATASETS)
def test_shipped_parm_files_are_the_archs_their_names_say(dataset: str) -> None:
    if not (MODELS / dataset / "parm_k10.pt").is_file():
        pytest.skip(f"no shipped {dataset} ParM")
    shipped = load_checkpoint(MODELS / dataset / "parm_k10.pt", "parm")["spec"]
    assert ParityCNNSpec.from_json(shipped) == ParityCNNSpec(image_shape=IMAGE_SHAPES[dataset])
    old = load_checkpoint(MODELS / dataset / "parm_sn_k10.pt", "parm")["spec"]
    assert arch_of(old) == SN_ARCH
