"""Training, evaluation and data loading, run for real on small subsets."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO_ROOT

from coded_invnet.checkpoint import ModelFileError, load_checkpoint, load_classifier, read_torch_file
from coded_invnet.data import DataError, load_dataset, read_idx
from coded_invnet.models.encoder import PARITY0_KERNEL, EncoderSpec, FusionEncoder, extra_kernel_for
from coded_invnet.tools import evaluate, report
from coded_invnet.training import cli, jobs, recipe
from coded_invnet.training.average import WeightAverage
from coded_invnet.training.encoder import initial_parity_encoder

REPO = REPO_ROOT


def test_smoke_training_writes_loadable_models(smoke_models: Path) -> None:
    model = load_classifier(smoke_models / "classifier.pt")
    assert load_checkpoint(smoke_models / "encoder_k2.pt", "encoder")["k"] == 2
    assert load_checkpoint(smoke_models / "encoder_k2_r2.pt", "encoder")["parities"] == 2
    assert load_checkpoint(smoke_models / "parm_k2.pt", "parm")["encoder"] == "mean"
    images = torch.from_numpy(load_dataset("mnist").test.images[:500])
    labels = load_dataset("mnist").test.labels[:500]
    with torch.no_grad():
        accuracy = (model(images)[0].argmax(1).numpy() == labels).mean()
    assert accuracy > 0.3, "even one epoch on 512 images learns something (chance: 0.1)"


def test_training_resumes_from_its_state(tmp_path: Path) -> None:
    args = ["base", "--dataset", "mnist", "--train-limit", "128", "--batch-size", "64"]
    args += ["--models-dir", str(tmp_path / "m"), "--checkpoints-dir", str(tmp_path / "c")]
    assert cli.main([*args, "--epochs", "1"]) == 0
    assert cli.main([*args, "--epochs", "2"]) == 0  # picks up after epoch 1
    history = load_checkpoint(tmp_path / "m" / "mnist" / "classifier.pt", "classifier")["history"]
    assert [h["epoch"] for h in history] == [1, 2]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["encoder", "--k", "1"], "--k must be"),
        (["base", "--dataset", "imagenet"], "unknown data set"),
        (["encoder", "--k", "4", "--base", "/nonexistent/classifier.pt"], "not found"),
    ],
)
def test_training_cli_bad_input(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_wrong_checkpoint_kind_is_named(smoke_models: Path) -> None:
    with pytest.raises(ModelFileError, match="expected 'classifier'"):
        load_classifier(smoke_models / "encoder_k2.pt")


def test_evaluate_writes_records(smoke_models: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(smoke_models, models / "mnist")
    out = tmp_path / "acc.json"
    code = evaluate.main(
        ["--datasets", "mnist", "--models-dir", str(models), "--limit", "200", "--out", str(out)]
        + ["--overhead-out", str(tmp_path / "o.json"), "--plot", str(tmp_path / "p.png")]
        + ["--parm-fit-out", str(tmp_path / "fit.json"), "--parity-sets-out", str(tmp_path / "sets.json")]
        + ["--results-md", str(tmp_path / "R.md")]
    )
    assert code == 0
    records = json.loads(out.read_text())
    keys = {
        "dataset",
        "k",
        "method",
        "r",
        "missing",
        "normal_accuracy",
        "degraded_accuracy",
        "recovery_accuracy",
        "n_queries",
    }
    assert all(set(r) == keys for r in records)
    by_method = {(r["method"], r["k"]): r for r in records}
    assert by_method[("none", 2)]["degraded_accuracy"] == 0.0
    assert by_method[("coded-invnet", 2)]["n_queries"] == 200
    assert by_method[("coded-invnet", 2)]["recovery_accuracy"] > 0.5
    assert ("parm", 2) in by_method
    coded = {(r["r"], r["missing"]): r for r in records if r["method"] == "coded-invnet"}
    assert set(coded) == {(1, 1), (2, 1), (2, 2)}
    assert coded[2, 2]["n_queries"] == 200  # k = 2, both members missing: each query decoded once
    assert coded[2, 1]["n_queries"] == 200  # one missing, from both parities: each query once
    sets = json.loads((tmp_path / "sets.json").read_text())["sets"]
    assert [(s["missing"], s["parities"]) for s in sets] == [([0], [0, 1]), ([1], [0, 1]), ([0, 1], [0, 1])]
    assert sum(s["decoded"] for s in sets if len(s["missing"]) == 2) == 200
    assert sets[0]["error_gain"] == 1.41  # least squares over both: 1/‖A[:, 0]‖ = √2, below row 0's 2
    assert json.loads((tmp_path / "acc.meta.json").read_text())["metrics"] == evaluate.METRICS
    assert report.PARITY_BEGIN in (tmp_path / "R.md").read_text()
    fits = json.loads((tmp_path / "fit.json").read_text())["records"]
    assert [(f["method"], f["k"]) for f in fits] == [("parm", 2)]  # the smoke run has no parm_sn
    assert fits[0]["decode_error_l2_median"] > 0 and fits[0]["base_margin_median"] > 0
    assert (tmp_path / "p.png").stat().st_size > 0
    assert report.TABLE_BEGIN in (tmp_path / "R.md").read_text()


def test_evaluate_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert evaluate.main(["--datasets", "svhn"]) == 2
    assert evaluate.main(["--datasets", "mnist", "--models-dir", str(tmp_path)]) == 2
    assert "make train" in capsys.readouterr().err


def test_shipped_results_match_the_doc() -> None:
    """docs/RESULTS.md quotes results/accuracy.json exactly (both are written by `make eval`)."""
    results = REPO / "results" / "accuracy.json"
    if not results.is_file():
        pytest.skip("no results/accuracy.json yet")
    table = report.accuracy_table(json.loads(results.read_text()))
    assert table in (REPO / "docs" / "RESULTS.md").read_text()


# ------------------------------------------------------------------ data loaders


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_directory_is_loaded(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "MNIST" / "raw"
    folder.mkdir(parents=True)
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (10_050, 28, 28)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 10_050))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 20))
    data = load_dataset("mnist", tmp_path)
    assert (len(data.train), len(data.val), len(data.test)) == (50, 10_000, 20)
    assert data.train.images.shape[1:] == (1, 28, 28) and data.train.images.max() <= 1.0


def test_corrupt_and_missing_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big") * 3 + b"short")
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(bad)
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=str(bad)):
        read_idx(bad)
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(DataError, match="unknown data set"):
        load_dataset("svhn")


def test_standard_data_sets_load() -> None:
    for name in ("mnist", "fashion-mnist"):
        data = load_dataset(name)
        assert (len(data.train), len(data.val), len(data.test)) == (50_000, 10_000, 10_000)
        assert data.image_shape == (1, 28, 28) and set(np.unique(data.test.labels)) == set(range(10))


def test_weight_average_follows_the_model_and_swaps_back() -> None:
    model = torch.nn.Linear(2, 1)
    average = WeightAverage(model, decay=0.5)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    for _ in range(200):  # the average converges to weights that stay put
        average.update(model)
    live = model.weight.detach().clone()
    assert torch.allclose(average.shadow["weight"], live, atol=1e-5)
    with torch.no_grad():
        model.weight.copy_(start)
    with average.swapped_in(model):
        assert torch.allclose(model.weight, live, atol=1e-5), "inside: the average"
    assert torch.equal(model.weight.detach(), start), "after: the live weights again"


def test_jointly_coding_aware_base_records_its_weight(tmp_path: Path) -> None:
    args = ["base", "--dataset", "mnist", "--epochs", "1", "--train-limit", "128", "--batch-size", "64"]
    args += ["--coding-aware", "0.5", "--mixup-share", "0.5", "--shift", "1"]
    args += ["--models-dir", str(tmp_path / "m"), "--checkpoints-dir", str(tmp_path / "c")]
    assert cli.main(args) == 0
    ckpt = load_checkpoint(tmp_path / "m" / "mnist" / "classifier.pt", "classifier")
    assert ckpt["coding_aware"] == 0.5 and ckpt["mixup"] == 0.5 and tuple(ckpt["augment"]) == (1, False)
    assert 0.0 < ckpt["val_score"] <= 1.0


def test_plan_builds_every_model_on_an_earlier_one() -> None:
    planned = jobs.plan(("mnist", "fashion-mnist"), ablations=True)
    made: set[tuple[str, str]] = set()
    for job in planned:
        if job.kind != "base":
            assert (job.dataset, job.base) in made, f"{job.name} needs {job.base} first"
        made.add((job.dataset, job.name))
    names = {name for _, name in made}
    assert {"classifier", "encoder_k10", "parm_k10", "encoder_gan_k2", "classifier_nomixup"} <= names
    classifiers = {(job.dataset, job.name): job for job in planned if job.kind == "base"}
    for ds in ("mnist", "fashion-mnist"):  # an ablation differs from the main model in mixup alone
        main, ablation = classifiers[(ds, "classifier")], classifiers[(ds, "classifier_nomixup")]
        assert main.coding_aware == ablation.coding_aware == recipe.DATASET_CODING_AWARE.get(ds, 0.0)
        assert main.mixup and not ablation.mixup


def test_gan_encoder_resumes_with_its_critic(smoke_models: Path, tmp_path: Path) -> None:
    """The critic and its optimiser are part of the saved state: a resumed run continues them."""
    args = ["encoder", "--k", "2", "--loss", "gan", "--train-limit", "128", "--batch-size", "64"]
    args += ["--base", str(smoke_models / "classifier.pt"), "--name", "encoder_gan_k2"]
    args += ["--models-dir", str(tmp_path / "m"), "--checkpoints-dir", str(tmp_path / "c")]
    state_path = tmp_path / "c" / "mnist" / "encoder_gan_k2.state.pt"

    def critic_steps() -> int:
        companions = read_torch_file(state_path)["companions"]
        assert set(companions) == {"critic", "critic_opt"}
        return int(companions["critic_opt"]["state"][0]["step"])

    assert cli.main([*args, "--epochs", "1"]) == 0
    after_one = critic_steps()
    assert after_one > 0
    assert cli.main([*args, "--epochs", "2"]) == 0
    assert critic_steps() == 2 * after_one, "the resumed run started a fresh critic optimiser"
    history = load_checkpoint(tmp_path / "m" / "mnist" / "encoder_gan_k2.pt", "encoder")["history"]
    assert [h["epoch"] for h in history] == [1, 2]


def test_training_runs_as_a_module() -> None:
    """`python -m coded_invnet.training` (what `make train` runs) is the command line."""
    done = subprocess.run(
        [sys.executable, "-m", "coded_invnet.training", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m coded_invnet.training")
    assert "{base,encoder,parm,all}" in done.stdout
    assert "coded_invnet.training all" in (REPO / "Makefile").read_text()


def test_a_weighted_mean_parity_starts_from_the_mean_correction() -> None:
    """k = 10, r = 2 (row 1 positive): parity 1 starts as parity 0's trained correction; k = 4, r = 2
    (a signed row): at its pixel combination, a zero correction."""
    torch.manual_seed(0)
    for k, copied in ((10, True), (4, False)):
        one = FusionEncoder(EncoderSpec(k=k))
        for p in one.fuse.parameters():
            torch.nn.init.normal_(p, std=0.1)  # a trained, non-zero correction
        enc = initial_parity_encoder(EncoderSpec(k=k, parities=2, extra_kernel=PARITY0_KERNEL), one)
        for got, want in zip(enc.extra[0].parameters(), one.fuse.parameters(), strict=True):
            assert torch.equal(got, want) == copied
        assert torch.equal(enc.fuse.state_dict()["0.weight"], one.fuse.state_dict()["0.weight"])
        if not copied:
            assert not enc.extra[0].state_dict()["2.weight"].any()  # the correction conv starts at zero
    # what `make train` and the CLI use: the 3×3 for the weighted-mean codes only
    assert [extra_kernel_for(k, r) for k, r in ((10, 2), (10, 3), (4, 2), (4, 3))] == [3, 3, 1, 1]
