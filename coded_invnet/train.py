"""Training: base classifier (Manifold Mixup), Coded-InvNet encoders F_k, ParM parity models.

Every run is resumable: state is saved to ``checkpoints/`` after each epoch and picked up on restart;
the best epoch on the validation split is what gets written to ``models/``.

    python -m coded_invnet.train base --dataset mnist
    python -m coded_invnet.train encoder --dataset mnist --k 10
    python -m coded_invnet.train parm --dataset mnist --k 10
    python -m coded_invnet.train all            # every shipped model that is missing
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from coded_invnet import coding
from coded_invnet.checkpoint import (
    ModelFileError,
    load_classifier,
    save_checkpoint,
)
from coded_invnet.data import DATASETS, DataError, Dataset, Split, load_dataset
from coded_invnet.models.classifier import ClassifierSpec, InvNetClassifier
from coded_invnet.models.encoder import EncoderSpec, FusionEncoder
from coded_invnet.models.parm import ParityModel

KS = (2, 4, 10)
ENCODER_EPOCH_SCALE = 0.5  # encoders/ParM train for a fraction of the base epochs
PARM_EPOCH_SCALE = 0.25
SMALL_K_EPOCH_SCALE = 0.2  # k <= 4 converges within a few epochs (both F_k and ParM)
# Where the plain Manifold-Mixup body decodes poorly at k=10 (MNIST: 45% with the pixel-mean parity), the
# shipped classifier is trained coding-aware from the start with this weight β (train_base). Fine-tuning
# a finished base instead (train_coding_aware, session 2) cost 0.5-0.8 points of accuracy at any β or lr.
DATASET_CODING_AWARE = {"mnist": 0.5}
DEFAULT_COEFF = 0.9  # spectral-norm coefficient of every conv in g (both data sets)
# Training-time augmentation of the classifier (never of encoders: they learn the exact parity target).
# On Fashion-MNIST, shifts and flips slowed training down (val 0.854 against 0.889 after 6 epochs).
DATASET_AUGMENT = {"mnist": (2, False)}  # (max shift, horizontal flip)
# Share of batches trained with Manifold Mixup (the rest plain cross-entropy) where not 1: full mixup
# cost clean accuracy (Fashion-MNIST val 0.896 against 0.905 without; MNIST test 98.85% against 99.04%).
DATASET_MIXUP_SHARE = {"mnist": 0.5, "fashion-mnist": 0.5}
# Main classifier epochs relative to --epochs (15 by default) where not 1: Fashion-MNIST still gained
# after 15 epochs (val 0.894 at epoch 7 of 25). The no-mixup ablation gets the default.
BASE_EPOCH_SCALE = {"fashion-mnist": 5 / 3}
DEFAULT_HEAD_HIDDEN = 256
DEFAULT_HIDDEN = (32, 64)  # residual-branch widths of g's two stages
WEIGHT_AVERAGE_DECAY = 0.998  # classifiers ship the moving average of their weights (about one epoch)


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


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class WeightAverage:
    """Exponential moving average of a model's parameters (buffers, e.g. power-iteration vectors, follow
    the live model). Validating and shipping the average instead of the last step's weights removes most
    of the step-to-step noise of the final epochs."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        assert 0 < decay < 1, f"decay must be in (0, 1), got {decay}"
        self.decay, self.updates = decay, 0
        self.param_names = {name for name, _ in model.named_parameters()}
        self.shadow = {key: value.detach().clone() for key, value in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))  # short memory at the start
        for key, value in model.state_dict().items():
            if key in self.param_names:
                self.shadow[key].lerp_(value, 1 - decay)
            else:
                self.shadow[key].copy_(value)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """``model`` holds the average inside the block and its own weights again after it."""
        live = {key: value.detach().clone() for key, value in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield
        finally:
            model.load_state_dict(live)


def _epoch_loop(
    name: str,
    cfg: RunConfig,
    model: nn.Module,
    params: list[nn.Parameter],
    step: Callable[[int, int], torch.Tensor],
    steps_per_epoch: int,
    validate: Callable[[], float],
    extra_state: Callable[[], dict[str, Any]],
    ema_decay: float | None = None,
) -> tuple[dict[str, Any], float, list[dict[str, float]]]:
    """Generic resumable loop: AdamW + cosine schedule with warm-up, best-on-validation selection.

    ``step(epoch, i)`` returns the loss of one batch; ``validate()`` returns a score (higher is better).
    With ``ema_decay``, the weight average (WeightAverage) is what is validated and returned.
    Returns (best state_dict, best score, history).
    """
    state_path = cfg.checkpoints_dir / cfg.dataset / f"{name}.state.pt"
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
        saved = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        if average is not None:
            average.shadow, average.updates = saved["average"], saved["average_updates"]
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        start_epoch, best_score, best_state, history = (
            saved["epoch"],
            saved["best_score"],
            saved["best_state"],
            saved["history"],
        )
        tqdm.write(f"[{name}] resuming at epoch {start_epoch} (best {best_score:.4f})")
    for epoch in range(start_epoch, cfg.epochs):
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
        save_checkpoint_state = {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "sched": sched.state_dict(),
            "epoch": epoch + 1,
            "best_score": best_score,
            "best_state": best_state,
            "history": history,
            **({"average": average.shadow, "average_updates": average.updates} if average else {}),
            **extra_state(),
        }
        state_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(save_checkpoint_state, state_path.with_suffix(".tmp"))
        state_path.with_suffix(".tmp").replace(state_path)
    assert best_state is not None, f"{name}: no epoch was run (epochs={cfg.epochs})"
    return best_state, best_score, history


def _write_model(cfg: RunConfig, name: str, kind: str, best: dict[str, torch.Tensor], **meta: Any) -> Path:
    """Write the selected (best-on-validation) weights to models/<dataset>/<name>.pt with their metadata."""
    out = cfg.models_dir / cfg.dataset / f"{name}.pt"
    state = {key: value.cpu() for key, value in best.items()}
    save_checkpoint(out, kind, state, dataset=cfg.dataset, command=" ".join(sys.argv), **meta)
    scores = {key: value for key, value in meta.items() if key.startswith("val_")}
    tqdm.write(f"[{name}] wrote {out} {scores}")
    return out


def _tensor(split: Split, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(split.images).to(device), torch.from_numpy(split.labels).to(device)


@torch.no_grad()
def predict(
    model: InvNetClassifier, images: torch.Tensor, batch: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, z) of ``images`` in eval mode, batched."""
    outs = [model(images[i : i + batch]) for i in range(0, len(images), batch)]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def _train_split(data: Dataset, cfg: RunConfig) -> Split:
    return data.train.take(cfg.train_limit) if cfg.train_limit else data.train


def _val_split(data: Dataset, cfg: RunConfig) -> Split:
    return data.val.take(min(len(data.val), 2000 if cfg.train_limit else 5000))


# ---------------------------------------------------------------- base classifier (g + h, Manifold Mixup)


def random_shift_flip(x: torch.Tensor, max_shift: int, flip: bool) -> torch.Tensor:
    """x (B, C, H, W) with each image translated by up to ``max_shift`` pixels (zero fill) and, with
    ``flip``, mirrored left-right with probability 1/2."""
    b, c, h, w = x.shape
    if max_shift > 0:
        padded = F.pad(x, (max_shift,) * 4)
        dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b, 1), device=x.device)
        rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        x = padded[batch, torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    if flip:
        x = torch.where(torch.rand(b, 1, 1, 1, device=x.device) < 0.5, x.flip(-1), x)
    return x


class ShuffledBatches:
    """Batch i of the current epoch's random order (augmented if asked); a new order is drawn at i == 0."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int, augment: tuple[int, bool] = (0, False)
    ) -> None:
        self.x, self.y, self.batch_size, self.augment = x, y, batch_size, augment
        self.steps = len(x) // batch_size
        self.order = torch.randperm(len(x), device=x.device)

    def __call__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i == 0:
            self.order = torch.randperm(len(self.x), device=self.x.device)
        idx = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        return random_shift_flip(self.x[idx], *self.augment), self.y[idx]


def classification_loss(
    model: InvNetClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    mixup: float,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(loss, z): cross-entropy and the latents it computed, or on a share ``mixup`` of batches the
    Manifold Mixup loss (random layer, λ ~ Beta(1, 1)) and None."""
    if mixup <= 0 or rng.random() >= mixup:
        logits, z = model(x)
        return F.cross_entropy(logits, y), z
    lam = float(rng.beta(1.0, 1.0))
    perm = torch.randperm(len(x), device=x.device)
    logits = model.mixup_logits(x, perm, lam, int(rng.integers(0, model.g.num_mix_points + 1)))
    return lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm]), None


def mixup_share_for(dataset: str, mixup: bool) -> float:
    """Share of Manifold Mixup batches of a classifier of ``dataset`` (0 for the no-mixup ablation)."""
    return DATASET_MIXUP_SHARE.get(dataset, 1.0) if mixup else 0.0


def pixel_mean_decoding_loss(
    model: InvNetClassifier, x: torch.Tensor, z: torch.Tensor | None, y: torch.Tensor, k: int
) -> torch.Tensor:
    """Cross-entropy of h(ẑ_j), ẑ_j decoded from the pixel-mean parity of groups of k consecutive rows of
    the batch (x, labels y; z: its latents when a clean pass computed them), every member missing in turn."""
    z = model.g(x) if z is None else z
    n = (len(x) // k) * k
    members = z[:n].unflatten(0, (-1, k)).transpose(0, 1)  # (k, G, D)
    decoded = coding.decode_all(model.g(x[:n].unflatten(0, (-1, k)).mean(1)), members)  # (k, G, D)
    target = y[:n].unflatten(0, (-1, k)).T  # (k, G)
    return F.cross_entropy(model.h(decoded).flatten(0, 1), target.flatten())


def coding_validation(
    model: InvNetClassifier, x_val: torch.Tensor, y_val: torch.Tensor, seed: int
) -> Callable[[], float]:
    """Validation score of a coding-aware classifier: mean of its accuracy and its worst pixel-mean
    recovery over KS (the product needs both)."""
    val_groups = {k: fixed_val_groups(x_val, k, 200, seed) for k in KS}

    def validate() -> float:
        accuracy = (predict(model, x_val)[0].argmax(1) == y_val).float().mean().item()
        recovery = min(
            decoded_agreement(model, groups, lambda b: model.g(b.mean(1)), latent=True)
            for groups in val_groups.values()
        )
        return (accuracy + recovery) / 2

    return validate


def train_base(
    cfg: RunConfig,
    data: Dataset,
    spec: ClassifierSpec,
    mixup_share: float,
    name: str,
    augment: tuple[int, bool] | None = None,
    coding_aware: float = 0.0,
) -> Path:
    """Train g + h from scratch. With ``coding_aware`` = β > 0, the loss also has β·pixel_mean_decoding_loss
    (k drawn from KS per batch, β ramped up over the first two epochs), so that g learns decodable
    features from the start instead of being bent towards them afterwards (train_coding_aware)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = InvNetClassifier(spec).to(cfg.device)
    x_train, y_train = _tensor(_train_split(data, cfg), cfg.device)
    x_val, y_val = _tensor(_val_split(data, cfg), cfg.device)
    if augment is None:
        augment = DATASET_AUGMENT.get(cfg.dataset, (0, False))
    batches = ShuffledBatches(x_train, y_train, cfg.batch_size, augment)

    def step(epoch: int, i: int) -> torch.Tensor:
        x, y = batches(i)
        loss, z = classification_loss(model, x, y, mixup_share, rng)
        if coding_aware > 0:
            ramp = min(1.0, (epoch * batches.steps + i) / (2 * batches.steps))
            loss = loss + coding_aware * ramp * pixel_mean_decoding_loss(model, x, z, y, int(rng.choice(KS)))
        return loss

    def accuracy() -> float:
        return (predict(model, x_val)[0].argmax(1) == y_val).float().mean().item()

    validate = coding_validation(model, x_val, y_val, cfg.seed) if coding_aware > 0 else accuracy
    best, score, history = _epoch_loop(
        name, cfg, model, list(model.parameters()), step, batches.steps, validate, dict, WEIGHT_AVERAGE_DECAY
    )
    return _write_model(
        cfg,
        name,
        "classifier",
        best,
        spec=spec.to_json(),
        mixup=mixup_share,
        augment=augment,
        coding_aware=coding_aware,
        **({"val_score": score} if coding_aware > 0 else {"val_accuracy": score}),
        history=history,
    )


def train_coding_aware(
    cfg: RunConfig, data: Dataset, base_path: Path, name: str, mixup: bool = True, beta: float = 1.0
) -> Path:
    """Fine-tune g and h so that coding works even with the plain pixel-mean parity.

    Loss: the Manifold Mixup loss of base training, plus β·pixel_mean_decoding_loss (k drawn from KS).
    One g serves every k, so the workers stay k-agnostic; the learned encoders F_k then start from a
    better point.
    """
    torch.manual_seed(cfg.seed + 7)
    rng = np.random.default_rng(cfg.seed + 7)
    model = load_classifier(base_path).to(cfg.device)
    x_train, y_train = _tensor(_train_split(data, cfg), cfg.device)
    x_val, y_val = _tensor(_val_split(data, cfg), cfg.device)
    batches = ShuffledBatches(x_train, y_train, cfg.batch_size, DATASET_AUGMENT.get(cfg.dataset, (0, False)))
    mixup_share = mixup_share_for(cfg.dataset, mixup)

    def step(epoch: int, i: int) -> torch.Tensor:
        x, y = batches(i)
        class_loss, z = classification_loss(model, x, y, mixup_share, rng)
        return class_loss + beta * pixel_mean_decoding_loss(model, x, z, y, int(rng.choice(KS)))

    validate = coding_validation(model, x_val, y_val, cfg.seed)
    best, score, history = _epoch_loop(
        name, cfg, model, list(model.parameters()), step, batches.steps, validate, dict
    )
    return _write_model(
        cfg,
        name,
        "classifier",
        best,
        spec=model.spec.to_json(),
        mixup=mixup,
        coding_aware=beta,
        val_score=score,
        history=history,
        base=base_path.name,
    )


# ---------------------------------------------------------------- group sampling shared by encoders and ParM


def sample_groups(x: torch.Tensor, k: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    """(batch, k, C, H, W) groups of k distinct-at-random training images."""
    idx = torch.randint(0, len(x), (batch, k), generator=gen, device="cpu").to(x.device)
    return x[idx]


def fixed_val_groups(x: torch.Tensor, k: int, count: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return sample_groups(x, k, count, gen)


@torch.no_grad()
def decoded_agreement(
    base: InvNetClassifier,
    groups: torch.Tensor,
    parity_logits_or_z: Callable[[torch.Tensor], torch.Tensor],
    latent: bool,
) -> float:
    """Fraction of decoded predictions (every position missing in turn) agreeing with the base model."""
    b, k = groups.shape[:2]
    flat = groups.flatten(0, 1)
    logits, z = base(flat)
    outputs = (z if latent else logits).reshape(b, k, -1).transpose(0, 1)  # (k, B, D)
    parity = parity_logits_or_z(groups)  # (B, D)
    decoded = coding.decode_all(parity, outputs)  # (k, B, D)
    decoded_logits = base.h(decoded) if latent else decoded
    target = logits.reshape(b, k, -1).transpose(0, 1).argmax(-1)
    return (decoded_logits.argmax(-1) == target).float().mean().item()


# ---------------------------------------------------------------- Coded-InvNet encoder F_k


ENCODER_LOSSES = ("decoded+latent", "latent", "gan")


def train_encoder(cfg: RunConfig, data: Dataset, base_path: Path, k: int, loss_kind: str, name: str) -> Path:
    """Train F_k with g, h frozen. Losses:
    - decoded+latent: KL(h(ẑ_j) ‖ base softmax) over every missing j, plus L1(g(F(x)) − mean z);
    - latent: the L1 latent term only (ablation);
    - gan: decoded+latent plus the paper's hinge-GAN term (a small critic on g-space, ablation).
    """
    assert loss_kind in ENCODER_LOSSES, f"loss must be one of {ENCODER_LOSSES}"
    torch.manual_seed(cfg.seed + k)
    base = load_classifier(base_path).to(cfg.device)
    for p in base.parameters():
        p.requires_grad_(False)
    spec = EncoderSpec(image_shape=base.spec.image_shape, k=k)
    enc = FusionEncoder(spec).to(cfg.device)
    x_train, _ = _tensor(_train_split(data, cfg), cfg.device)
    x_val, _ = _tensor(_val_split(data, cfg), cfg.device)
    val_groups = fixed_val_groups(x_val, k, 400 if cfg.train_limit else 1000, cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 17 * k)
    bs = max(8, cfg.batch_size // k)
    steps = max(1, len(x_train) // (bs * k))
    critic = _Critic(base.g.latent_dim).to(cfg.device) if loss_kind == "gan" else None
    critic_opt = torch.optim.Adam(critic.parameters(), 2e-4, betas=(0.5, 0.9)) if critic else None

    def step(epoch: int, i: int) -> torch.Tensor:
        groups = sample_groups(x_train, k, bs, gen)  # (B, k, C, H, W)
        with torch.no_grad():
            logits, z = base(groups.flatten(0, 1))
            z = z.reshape(bs, k, -1)
            target_prob = logits.reshape(bs, k, -1).softmax(-1).transpose(0, 1)  # (k, B, classes)
        z_p = base.g(enc(groups))  # (B, D), gradient flows through frozen g into F
        latent_loss = (z_p - z.mean(1)).abs().mean()
        if loss_kind == "latent":
            return latent_loss
        decoded = coding.decode_all(z_p, z.transpose(0, 1))  # (k, B, D)
        log_q = base.h(decoded).log_softmax(-1)
        kl = (target_prob * (target_prob.clamp_min(1e-8).log() - log_q)).sum(-1).mean()
        loss = kl + latent_loss
        if critic is not None and critic_opt is not None:
            real, fake = z.mean(1), z_p
            d_loss = F.relu(1 - critic(real)).mean() + F.relu(1 + critic(fake.detach())).mean()
            critic_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            critic_opt.step()
            loss = loss - 0.01 * critic(fake).mean()
        return loss

    def validate() -> float:
        return decoded_agreement(base, val_groups, lambda g: base.g(enc(g)), latent=True)

    extra = (lambda: {"critic": critic.state_dict()}) if critic else (lambda: {})
    best, score, history = _epoch_loop(name, cfg, enc, list(enc.parameters()), step, steps, validate, extra)
    return _write_model(
        cfg,
        name,
        "encoder",
        best,
        spec=spec.to_json(),
        k=k,
        loss=loss_kind,
        base=base_path.name,
        val_recovery=score,
        history=history,
    )


class _Critic(nn.Module):
    """Hinge-GAN critic on latents (spectrally normalised MLP), used only by the 'gan' encoder loss."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.net = nn.Sequential(sn(nn.Linear(dim, 256)), nn.LeakyReLU(0.2), sn(nn.Linear(256, 1)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(-1)


# ---------------------------------------------------------------- ParM baseline


def train_parm(cfg: RunConfig, data: Dataset, base_path: Path, k: int, name: str) -> Path:
    """ParM (Kosaian et al. 2019): a parity model P of the base architecture, fed the averaging encoder's
    output mean_i x_i, trained so that P(mean x) ≈ mean_i f(x_i) in logit space (MSE), decoded by
    subtraction. Initialised from the base model's weights."""
    torch.manual_seed(cfg.seed + 100 + k)
    base = load_classifier(base_path).to(cfg.device)
    for p in base.parameters():
        p.requires_grad_(False)
    parity = ParityModel(base.spec, k).to(cfg.device)
    parity.net.load_state_dict(base.state_dict())
    x_train, _ = _tensor(_train_split(data, cfg), cfg.device)
    x_val, _ = _tensor(_val_split(data, cfg), cfg.device)
    val_groups = fixed_val_groups(x_val, k, 400 if cfg.train_limit else 1000, cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 31 * k)
    bs = max(8, cfg.batch_size // k)  # groups per step: k·bs base queries make the targets
    steps = max(1, len(x_train) // (bs * k))

    def step(epoch: int, i: int) -> torch.Tensor:
        groups = sample_groups(x_train, k, bs, gen)
        with torch.no_grad():
            target = base(groups.flatten(0, 1))[0].reshape(bs, k, -1).mean(1)
        return F.mse_loss(parity(parity.encode(groups)), target)

    def validate() -> float:
        return decoded_agreement(base, val_groups, lambda g: parity(parity.encode(g)), latent=False)

    best, score, history = _epoch_loop(
        name, cfg, parity, list(parity.parameters()), step, steps, validate, dict
    )
    return _write_model(
        cfg,
        name,
        "parm",
        best,
        spec=base.spec.to_json(),
        k=k,
        encoder="mean",
        val_recovery=score,
        history=history,
    )


# ---------------------------------------------------------------- the shipped set, resumable


@dataclass(frozen=True)
class Job:
    """One shipped model: ``kind`` is base | encoder | parm; ``base`` is what it builds on."""

    dataset: str
    name: str
    kind: str
    k: int = 0
    mixup: bool = True
    loss: str = "decoded+latent"
    base: str = "classifier"
    epoch_scale: float = 1.0
    coding_aware: float = 0.0  # base: β of the joint decoding loss


def plan(datasets: tuple[str, ...], ablations: bool) -> list[Job]:
    """Every shipped model, in dependency order (k=10 first: the headline case)."""
    jobs: list[Job] = []
    for ds in datasets:
        coding_aware = DATASET_CODING_AWARE.get(ds, 0.0)
        jobs.append(
            Job(
                ds, "classifier", "base", epoch_scale=BASE_EPOCH_SCALE.get(ds, 1.0), coding_aware=coding_aware
            )
        )
        for k in sorted(KS, reverse=True):
            encoder_scale = ENCODER_EPOCH_SCALE if k >= 10 else SMALL_K_EPOCH_SCALE
            parm_scale = PARM_EPOCH_SCALE if k >= 10 else SMALL_K_EPOCH_SCALE
            jobs.append(Job(ds, f"encoder_k{k}", "encoder", k, epoch_scale=encoder_scale))
            jobs.append(Job(ds, f"parm_k{k}", "parm", k, epoch_scale=parm_scale))
        if not ablations:
            continue
        jobs.append(Job(ds, "classifier_nomixup", "base", mixup=False, coding_aware=coding_aware))
        for k in sorted(KS, reverse=True):
            half = (ENCODER_EPOCH_SCALE if k >= 10 else SMALL_K_EPOCH_SCALE) / 2
            jobs.append(
                Job(ds, f"encoder_nomixup_k{k}", "encoder", k, base="classifier_nomixup", epoch_scale=half)
            )
            jobs.append(Job(ds, f"encoder_latent_k{k}", "encoder", k, loss="latent", epoch_scale=half))
            jobs.append(Job(ds, f"encoder_gan_k{k}", "encoder", k, loss="gan", epoch_scale=half))
    return jobs


def run_job(cfg: RunConfig, job: Job, data: Dataset, coeff: float | None = None) -> Path:
    c = replace(
        cfg,
        dataset=job.dataset,
        epochs=max(1, round(cfg.epochs * job.epoch_scale)),
    )
    base = c.models_dir / job.dataset / f"{job.base}.pt"
    if job.kind == "base":
        chosen = coeff if coeff is not None else DEFAULT_COEFF
        spec = base_spec(job.dataset, chosen)
        mixup_share = mixup_share_for(job.dataset, job.mixup)
        return train_base(c, data, spec, mixup_share, job.name, coding_aware=job.coding_aware)
    if job.kind == "encoder":
        return train_encoder(c, data, base, job.k, job.loss, job.name)
    return train_parm(c, data, base, job.k, job.name)


def base_spec(
    dataset: str,
    coeff: float = DEFAULT_COEFF,
    hidden: tuple[int, int] = DEFAULT_HIDDEN,
    head_hidden: int = DEFAULT_HEAD_HIDDEN,
) -> ClassifierSpec:
    shape = (3, 32, 32) if dataset == "cifar10" else (1, 28, 28)
    return ClassifierSpec(image_shape=shape, coeff=coeff, hidden=hidden, head_hidden=head_hidden)


def run_all(
    cfg: RunConfig, datasets: tuple[str, ...], ablations: bool, only: str | None, coeff: float | None
) -> None:
    """Train every shipped model that is missing (finished ones are skipped; interrupted ones resume)."""
    cache: dict[str, Dataset] = {}
    for job in plan(datasets, ablations):
        label = f"{job.dataset}/{job.name}"
        if only and only not in (label, job.name):
            continue
        if (cfg.models_dir / f"{label}.pt").is_file():
            tqdm.write(f"[all] {label}.pt exists, skipping")
            continue
        if job.dataset not in cache:
            cache[job.dataset] = load_dataset(job.dataset)
        run_job(cfg, job, cache[job.dataset], coeff)


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coded_invnet.train", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("base", "coding-aware", "encoder", "parm", "all"))
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--datasets", default="mnist,fashion-mnist", help="for 'all'")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--loss", default="decoded+latent", choices=ENCODER_LOSSES)
    parser.add_argument("--no-mixup", action="store_true")
    parser.add_argument("--mixup-share", type=float, default=None, help="share of mixup batches (base)")
    parser.add_argument(
        "--coding-aware",
        type=float,
        default=None,
        help="base: weight β of the decoding loss, trained jointly (default per data set)",
    )
    parser.add_argument("--no-ablations", action="store_true", help="for 'all': skip ablation models")
    parser.add_argument("--only", help="for 'all': run only this job (e.g. encoder_k10 or mnist/encoder_k10)")
    parser.add_argument("--name", help="output file stem (default from the job)")
    parser.add_argument("--base", help="base classifier checkpoint (default models/<dataset>/classifier.pt)")
    parser.add_argument(
        "--coeff", type=float, default=None, help=f"spectral-norm coefficient of g (default {DEFAULT_COEFF})"
    )
    parser.add_argument(
        "--hidden", default=",".join(map(str, DEFAULT_HIDDEN)), help="g's branch widths, e.g. 64,128"
    )
    parser.add_argument(
        "--shift", type=int, default=None, help="max training shift in pixels (default per data set)"
    )
    parser.add_argument("--flip", action="store_true", help="also flip training images left-right")
    parser.add_argument("--head-hidden", type=int, default=DEFAULT_HEAD_HIDDEN, help="h's hidden width")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--checkpoints-dir", default="checkpoints")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.k < 2 or args.k > 64:
        print(f"error: --k must be between 2 and 64, got {args.k}", file=sys.stderr)
        return 2
    datasets = tuple(d.strip() for d in args.datasets.split(",") if d.strip())
    for ds in (args.dataset, *datasets):
        if ds not in DATASETS:
            print(f"error: unknown data set {ds!r}; choose from {', '.join(DATASETS)}", file=sys.stderr)
            return 2
    cfg = RunConfig(
        dataset=args.dataset,
        models_dir=Path(args.models_dir),
        checkpoints_dir=Path(args.checkpoints_dir),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        train_limit=args.train_limit,
        device=pick_device(),
    )
    try:
        if args.what == "all":
            run_all(cfg, datasets, not args.no_ablations, args.only, args.coeff)
            return 0
        data = load_dataset(args.dataset)
        base = Path(args.base) if args.base else cfg.models_dir / args.dataset / "classifier.pt"
        if args.what == "base":
            name = args.name or ("classifier_nomixup" if args.no_mixup else "classifier")
            hidden = tuple(int(v) for v in args.hidden.split(","))
            assert len(hidden) == 2, "--hidden takes two widths"
            coeff = args.coeff if args.coeff is not None else DEFAULT_COEFF
            spec = base_spec(args.dataset, coeff, (hidden[0], hidden[1]), args.head_hidden)
            augment = DATASET_AUGMENT.get(args.dataset, (0, False))
            if args.shift is not None or args.flip:
                augment = (augment[0] if args.shift is None else args.shift, args.flip)
            beta = (
                DATASET_CODING_AWARE.get(args.dataset, 0.0)
                if args.coding_aware is None
                else args.coding_aware
            )
            mixup_share = mixup_share_for(args.dataset, not args.no_mixup)
            if args.mixup_share is not None and not args.no_mixup:
                mixup_share = args.mixup_share
            train_base(cfg, data, spec, mixup_share, name, augment, beta)
        elif args.what == "coding-aware":
            name = args.name or ("classifier_nomixup" if args.no_mixup else "classifier")
            train_coding_aware(cfg, data, base, name, mixup=not args.no_mixup)
        elif args.what == "encoder":
            train_encoder(cfg, data, base, args.k, args.loss, args.name or f"encoder_k{args.k}")
        else:
            train_parm(cfg, data, base, args.k, args.name or f"parm_k{args.k}")
    except (DataError, ModelFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
