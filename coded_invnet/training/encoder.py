"""The Coded-InvNet encoders F_k (one parity, and r parities fine-tuned from it), trained with g, h frozen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from coded_invnet import coding
from coded_invnet.checkpoint import load_encoder
from coded_invnet.data import Dataset
from coded_invnet.models.classifier import InvNetClassifier
from coded_invnet.models.encoder import PARITY0_KERNEL, EncoderSpec, FusionEncoder, extra_kernel_for
from coded_invnet.training.groups import group_training
from coded_invnet.training.loop import RunConfig, Stateful, epoch_loop, write_model
from coded_invnet.training.losses import decoded_agreement

ENCODER_LOSSES = ("decoded+latent", "latent", "gan")
GAN_WEIGHT = 0.01  # weight of the critic's term in the 'gan' loss
SETS_PER_SIZE = 4  # r-parity encoders: random missing sets of each size 1..r in every step's loss


class Critic(nn.Module):
    """Hinge-GAN critic on latents (spectrally normalised MLP), used only by the 'gan' encoder loss."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.net = nn.Sequential(sn(nn.Linear(dim, 256)), nn.LeakyReLU(0.2), sn(nn.Linear(256, 1)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D) → score (B,)."""
        return self.net(z).squeeze(-1)


@torch.no_grad()
def base_targets(base: InvNetClassifier, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(z (B, k, D), base softmax (k, B, classes)) of groups (B, k, C, H, W): what parities are fit to."""
    b, k = groups.shape[:2]
    logits, z = base(groups.flatten(0, 1))  # (B·k, classes), (B·k, D)
    return z.reshape(b, k, -1), logits.reshape(b, k, -1).softmax(-1).transpose(0, 1)


def train_encoder(cfg: RunConfig, data: Dataset, base_path: Path, k: int, loss_kind: str, name: str) -> Path:
    """Train F_k with g, h frozen. Losses:
    - decoded+latent: KL(h(ẑ_j) ‖ base softmax) over every missing j, plus L1(g(F(x)) − mean z);
    - latent: the L1 latent term only (ablation);
    - gan: decoded+latent plus the paper's hinge-GAN term (a small critic on g-space, ablation).
    """
    assert loss_kind in ENCODER_LOSSES, f"loss must be one of {ENCODER_LOSSES}"
    torch.manual_seed(cfg.seed + k)
    run = group_training(cfg, data, base_path, k, sampling_seed=cfg.seed + 17 * k)
    base = run.base
    spec = EncoderSpec(image_shape=base.spec.image_shape, k=k)
    enc = FusionEncoder(spec).to(cfg.device)
    critic = Critic(base.g.latent_dim).to(cfg.device) if loss_kind == "gan" else None
    critic_opt = torch.optim.Adam(critic.parameters(), 2e-4, betas=(0.5, 0.9)) if critic else None

    def step(epoch: int, i: int) -> torch.Tensor:
        groups = run.sample()  # (B, k, C, H, W)
        z, target_prob = base_targets(base, groups)  # (B, k, D), (k, B, classes)
        z_p = base.g(enc(groups))  # (B, D), gradient flows through frozen g into F
        latent_loss = (z_p - z.mean(1)).abs().mean()
        if loss_kind == "latent":
            return latent_loss
        decoded = coding.decode_all(z_p, z.transpose(0, 1))  # (k, B, D)
        log_q = base.h(decoded).log_softmax(-1)  # (k, B, classes)
        kl = (target_prob * (target_prob.clamp_min(1e-8).log() - log_q)).sum(-1).mean()
        loss = kl + latent_loss
        if critic is not None and critic_opt is not None:
            real, fake = z.mean(1), z_p
            d_loss = F.relu(1 - critic(real)).mean() + F.relu(1 + critic(fake.detach())).mean()
            critic_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            critic_opt.step()
            loss = loss - GAN_WEIGHT * critic(fake).mean()
        return loss

    def validate() -> float:
        return decoded_agreement(base, run.val_groups, lambda g: base.g(enc(g)), latent=True)

    companions: dict[str, Stateful] = {}
    if critic is not None and critic_opt is not None:
        companions = {"critic": critic, "critic_opt": critic_opt}
    best, score, history = epoch_loop(name, cfg, enc, step, run.steps, validate, companions)
    return write_model(
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


def missing_sets(k: int, r: int, count: int, rng: np.random.Generator) -> list[tuple[list[int], list[int]]]:
    """``count`` random sets of missing members S of every size |S| in 1..r, each with the parities P
    the frontend decodes it from when all r are in (coding.decoding_rows): what serving uses is trained."""
    sets = [sorted(rng.choice(k, s, replace=False).tolist()) for s in range(1, r + 1) for _ in range(count)]
    return [(missing, coding.decoding_rows(range(r), missing)) for missing in sets]


def load_widened(encoder: FusionEncoder, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into ``encoder`` where shapes match; a 1×1 conv kernel going into a wider one is
    put at its centre (the same function), so a wider encoder starts where the narrower one ended."""
    own = encoder.state_dict()
    for key, value in state.items():
        target = own.get(key)
        if target is None:
            continue
        if target.shape != value.shape and value.shape[-2:] == (1, 1) and target.shape[:2] == value.shape[:2]:
            widened = torch.zeros_like(target)
            widened[..., target.shape[-2] // 2, target.shape[-1] // 2] = value[..., 0, 0]
            value = widened
        own[key] = value
    encoder.load_state_dict(own)


def initial_parity_encoder(spec: EncoderSpec, init: FusionEncoder) -> FusionEncoder:
    """An r-parity encoder that starts from ``init``: parity 0 and the branch from it. From a one-parity
    encoder, a parity whose row is a weighted mean (every coefficient positive) and whose fuse net has
    parity 0's kernel starts with parity 0's correction (the mean's, the nearest one known), any other
    at its pixel combination Σ_i A[m, i] x_i; from an r-parity encoder, every parity where it ended."""
    enc = FusionEncoder(spec)
    load_widened(enc, init.state_dict())
    if init.spec.parities == 1 and spec.extra_kernel == PARITY0_KERNEL:
        rows = coding.parity_coefficients(spec.k, spec.parities)[1:]
        for row, extra in zip(rows, enc.extra, strict=True):
            if coding.is_weighted_mean(row):
                extra.load_state_dict(enc.fuse.state_dict())
    return enc


def train_parity_encoders(
    cfg: RunConfig,
    data: Dataset,
    base_path: Path,
    init_path: Path,
    k: int,
    r: int,
    name: str,
    extra_kernel: int | None = None,
) -> Path:
    """Train F_k with r parities, fine-tuned from the one-parity encoder at ``init_path`` (its parity 0),
    g, h frozen; ``extra_kernel`` None: the code's own (models.encoder.extra_kernel_for). Loss:
    KL(h(ẑ_S) ‖ base softmax) over SETS_PER_SIZE random missing sets S of each size 1..r decoded as the
    frontend decodes them (missing_sets, coding.decode_set), plus L1(g(x_p^(m)) − Σ_i A[m, i] z_i) of
    every parity m."""
    torch.manual_seed(cfg.seed + k + 100 * r)
    rng = np.random.default_rng(cfg.seed + 31 * k + r)
    run = group_training(cfg, data, base_path, k, sampling_seed=cfg.seed + 17 * k + r)
    base = run.base
    kernel = extra_kernel or extra_kernel_for(k, r)
    spec = EncoderSpec(image_shape=base.spec.image_shape, k=k, parities=r, extra_kernel=kernel)
    enc = initial_parity_encoder(spec, load_encoder(init_path)).to(cfg.device)
    a = coding.parity_coefficients(k, r)  # (r, k)
    a_t = torch.as_tensor(a, dtype=torch.float32, device=cfg.device)
    val_sets = missing_sets(k, r, 3, np.random.default_rng(cfg.seed))

    def latents(groups: torch.Tensor) -> torch.Tensor:
        return base.g(enc(groups).flatten(0, 1)).unflatten(0, (len(groups), r))  # (B, r, D)

    def step(epoch: int, i: int) -> torch.Tensor:
        groups = run.sample()  # (B, k, C, H, W)
        z, target_prob = base_targets(base, groups)  # (B, k, D), (k, B, classes)
        z_p = latents(groups)  # (B, r, D), gradient flows through frozen g into F
        loss = (z_p - a_t @ z).abs().mean()
        members = z.transpose(0, 1)  # (k, B, D)
        sets = missing_sets(k, r, SETS_PER_SIZE, rng)  # h is cheap next to g: many sets per step
        for missing, rows in sets:
            decoded = coding.decode_set(a, rows, z_p[:, rows].transpose(0, 1), members, missing)  # (s, B, D)
            log_q = base.h(decoded).log_softmax(-1)  # (s, B, classes)
            p = target_prob[missing]  # (s, B, classes)
            loss = loss + (p * (p.clamp_min(1e-8).log() - log_q)).sum(-1).mean() / len(sets)
        return loss

    @torch.no_grad()
    def validate() -> float:
        """Agreement with the base model of the members decoded, over fixed sets of every size."""
        agree = []
        for chunk in run.val_groups.split(250):
            logits, z = base(chunk.flatten(0, 1))  # (G·k, classes), (G·k, D)
            target = logits.argmax(-1).reshape(len(chunk), k).T  # (k, G)
            members = z.reshape(len(chunk), k, -1).transpose(0, 1)  # (k, G, D)
            z_p = latents(chunk)  # (G, r, D)
            for missing, rows in val_sets:
                decoded = coding.decode_set(a, rows, z_p[:, rows].transpose(0, 1), members, missing)
                agree.append((base.h(decoded).argmax(-1) == target[missing]).float().mean().item())
        return float(np.mean(agree))

    best, score, history = epoch_loop(name, cfg, enc, step, run.steps, validate)
    meta = {"spec": spec.to_json(), "k": k, "parities": r, "base": base_path.name, "init": init_path.name}
    return write_model(cfg, name, "encoder", best, val_recovery=score, history=history, **meta)
