"""The Coded-InvNet encoders F_k, trained with the classifier g, h frozen."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from coded_invnet import coding
from coded_invnet.data import Dataset
from coded_invnet.models.encoder import EncoderSpec, FusionEncoder
from coded_invnet.training.groups import group_training
from coded_invnet.training.loop import RunConfig, Stateful, epoch_loop, write_model
from coded_invnet.training.losses import decoded_agreement

ENCODER_LOSSES = ("decoded+latent", "latent", "gan")
GAN_WEIGHT = 0.01  # weight of the critic's term in the 'gan' loss


class Critic(nn.Module):
    """Hinge-GAN critic on latents (spectrally normalised MLP), used only by the 'gan' encoder loss."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.net = nn.Sequential(sn(nn.Linear(dim, 256)), nn.LeakyReLU(0.2), sn(nn.Linear(256, 1)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D) → score (B,)."""
        return self.net(z).squeeze(-1)


def train_encoder(cfg: RunConfig, data: Dataset, base_path: Path, k: int, loss_kind: str, name: str) -> Path:
    """Train F_k with g, h frozen. Losses:
    - decoded+latent: KL(h(ẑ_j) ‖ base softmax) over every missing j, plus L1(g(F(x)) − mean z);
    - latent: the L1 latent term only (ablation);
    - gan: decoded+latent plus the paper's hinge-GAN term (a small critic on g-space, ablation).
    """
    assert loss_kind in ENCODER_LOSSES, f"loss must be one of {ENCODER_LOSSES}"
    torch.manual_seed(cfg.seed + k)
    run = group_training(cfg, data, base_path, k, sampling_seed=cfg.seed + 17 * k)
    base, bs = run.base, run.groups_per_step
    spec = EncoderSpec(image_shape=base.spec.image_shape, k=k)
    enc = FusionEncoder(spec).to(cfg.device)
    critic = Critic(base.g.latent_dim).to(cfg.device) if loss_kind == "gan" else None
    critic_opt = torch.optim.Adam(critic.parameters(), 2e-4, betas=(0.5, 0.9)) if critic else None

    def step(epoch: int, i: int) -> torch.Tensor:
        groups = run.sample()  # (B, k, C, H, W)
        with torch.no_grad():
            logits, z = base(groups.flatten(0, 1))  # (B·k, classes), (B·k, D)
            z = z.reshape(bs, k, -1)  # (B, k, D)
            target_prob = logits.reshape(bs, k, -1).softmax(-1).transpose(0, 1)  # (k, B, classes)
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
