"""The resumable epoch loop every model is trained with, and the run settings it shares."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from coded_invnet.checkpoint import read_torch_file, save_checkpoint, write_torch_file
from coded_invnet.data import Dataset, Split
from coded_invnet.models.classifier import InvNetClassifier
from coded_invnet.training.average import WeightAverage


@dataclass(frozen=True)
class RunConfig:
    dataset: str
    models_dir: Path
    checkpoints_dir: Path
    epochs: int
    batch_size: int
    lr: float
    seed: int
    train_limit: int | None  # use only the first N training images (smoke runs)
    device: str


class Stateful(Protocol):
    """What the loop saves and restores besides the model: a critic, its optimiser."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], /) -> Any: ...


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def epoch_loop(
    name: str,
    cfg: RunConfig,
    model: nn.Module,
    step: Callable[[int, int], torch.Tensor],
    steps_per_epoch: int,
    validate: Callable[[], float],
    companions: dict[str, Stateful] | None = None,
    ema_decay: float | None = None,
    patience: int | None = None,
) -> tuple[dict[str, Any], float, list[dict[str, float]]]:
    """Generic resumable loop over ``model``'s parameters: AdamW + cosine schedule with warm-up,
    best-on-validation selection.

    ``step(epoch, i)`` returns the loss of one batch; ``validate()`` returns a score (higher is better).
    ``companions`` (e.g. a GAN critic and its optimiser, which ``step`` trains itself) are saved with the
    state and restored on resume. With ``ema_decay``, the weight average (WeightAverage) is what is
    validated and returned. With ``patience``, training stops early once that many epochs in a row have
    not improved the best validation score.
    Returns (best state_dict, best score, history).
    """
    state_path = cfg.checkpoints_dir / cfg.dataset / f"{name}.state.pt"
    params = list(model.parameters())
    companions = companions or {}
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    total = cfg.epochs * steps_per_epoch
    warmup = min(200, total // 10)

    def lr_at(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (t - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    average = WeightAverage(model, ema_decay) if ema_decay else None
    start_epoch, best_score, best_state, history = 0, -1.0, None, []
    if state_path.is_file():
        saved = read_torch_file(state_path)
        model.load_state_dict(saved["model"])
        if average is not None:
            average.shadow, average.updates = saved["average"], saved["average_updates"]
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        for key, companion in companions.items():
            companion.load_state_dict(saved["companions"][key])
        start_epoch, best_score, best_state, history = (
            saved["epoch"],
            saved["best_score"],
            saved["best_state"],
            saved["history"],
        )
        tqdm.write(f"[{name}] resuming at epoch {start_epoch} (best {best_score:.4f})")
    for epoch in range(start_epoch, cfg.epochs):
        if patience is not None and _epochs_since_best(history) >= patience:
            tqdm.write(f"[{name}] early stop after epoch {epoch}: no gain in {patience} epochs")
            break
        model.train()
        t0, losses = time.time(), []
        bar = tqdm(range(steps_per_epoch), desc=f"{cfg.dataset} {name} {epoch + 1}/{cfg.epochs}", leave=False)
        for i in bar:
            loss = step(epoch, i)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            sched.step()
            if average is not None:
                average.update(model)
            losses.append(loss.item())
            if i % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        model.eval()
        with average.swapped_in(model) if average else contextlib.nullcontext():
            score = validate()
            if score > best_score:
                best_score = score
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.append(
            {"epoch": epoch + 1, "loss": float(np.mean(losses)), "val": score, "s": time.time() - t0}
        )
        tqdm.write(
            f"[{name}] epoch {epoch + 1}: loss {np.mean(losses):.4f} val {score:.4f} "
            f"({time.time() - t0:.0f}s)"
        )
        state = {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "sched": sched.state_dict(),
            "epoch": epoch + 1,
            "best_score": best_score,
            "best_state": best_state,
            "history": history,
            **({"average": average.shadow, "average_updates": average.updates} if average else {}),
            "companions": {key: companion.state_dict() for key, companion in companions.items()},
        }
        write_torch_file(state_path, state)
    assert best_state is not None, f"{name}: no epoch was run (epochs={cfg.epochs})"
    return best_state, best_score, history


def _epochs_since_best(history: list[dict[str, float]]) -> int:
    scores = [h["val"] for h in history]
    return len(scores) - 1 - int(np.argmax(scores)) if scores else 0


def write_model(cfg: RunConfig, name: str, kind: str, best: dict[str, torch.Tensor], **meta: Any) -> Path:
    """Write the selected (best-on-validation) weights to models/<dataset>/<name>.pt with their metadata."""
    out = cfg.models_dir / cfg.dataset / f"{name}.pt"
    state = {key: value.cpu() for key, value in best.items()}
    save_checkpoint(out, kind, state, dataset=cfg.dataset, command=" ".join(sys.argv), **meta)
    scores = {key: value for key, value in meta.items() if key.startswith("val_")}
    tqdm.write(f"[{name}] wrote {out} {scores}")
    return out


def tensors(split: Split, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, C, H, W), labels (N,)) of ``split`` on ``device``."""
    return torch.from_numpy(split.images).to(device), torch.from_numpy(split.labels).to(device)


def train_split(data: Dataset, cfg: RunConfig) -> Split:
    return data.train.take(cfg.train_limit) if cfg.train_limit else data.train


def val_split(data: Dataset, cfg: RunConfig) -> Split:
    return data.val.take(min(len(data.val), 2000 if cfg.train_limit else 5000))


@torch.no_grad()
def predict(
    model: InvNetClassifier, images: torch.Tensor, batch: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, classes), z (N, D)) of ``images`` in eval mode, batched."""
    outs = [model(images[i : i + batch]) for i in range(0, len(images), batch)]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
