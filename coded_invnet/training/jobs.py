"""The shipped set of models as jobs in dependency order, and running them (resumable)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from coded_invnet.coding import SHIPPED_KS, SHIPPED_PARITY_CODES
from coded_invnet.data import Dataset, load_dataset
from coded_invnet.training.classifier import train_base
from coded_invnet.training.encoder import train_encoder, train_parity_encoders
from coded_invnet.training.loop import RunConfig
from coded_invnet.training.parm import train_parity_network, train_parm
from coded_invnet.training.recipe import (
    BASE_EPOCH_SCALE,
    DATASET_CODING_AWARE,
    DEFAULT_EPOCHS,
    ENCODER_EPOCH_SCALE,
    PARITY_EPOCHS,
    PARM_EPOCH_SCALE,
    PARM_NET_EPOCH_SCALE,
    PARM_NET_SMALL_K_EPOCH_SCALE,
    SMALL_K_EPOCH_SCALE,
    base_spec,
    mixup_share_for,
)


@dataclass(frozen=True)
class Job:
    """One shipped model: ``kind`` is base | encoder | parm | parm_sn; ``base`` is what it builds on."""

    dataset: str
    name: str
    kind: str
    k: int = 0
    mixup: bool = True
    loss: str = "decoded+latent"
    base: str = "classifier"
    epoch_scale: float = 1.0
    coding_aware: float = 0.0  # base: β of the joint decoding loss
    parities: int = 1  # encoder: r; with r ≥ 2 it is fine-tuned from encoder_k{k}


def plan(datasets: tuple[str, ...], ablations: bool) -> list[Job]:
    """Every shipped model, in dependency order (k=10 first: the headline case)."""
    jobs: list[Job] = []
    for ds in datasets:
        coding_aware = DATASET_CODING_AWARE.get(ds, 0.0)
        base_scale = BASE_EPOCH_SCALE.get(ds, 1.0)
        jobs.append(Job(ds, "classifier", "base", epoch_scale=base_scale, coding_aware=coding_aware))
        for k in sorted(SHIPPED_KS, reverse=True):
            encoder_scale = ENCODER_EPOCH_SCALE if k >= 10 else SMALL_K_EPOCH_SCALE
            parm_scale = PARM_NET_EPOCH_SCALE if k >= 10 else PARM_NET_SMALL_K_EPOCH_SCALE
            jobs.append(Job(ds, f"encoder_k{k}", "encoder", k, epoch_scale=encoder_scale))
            jobs.append(Job(ds, f"parm_k{k}", "parm", k, epoch_scale=parm_scale))
        for k, r in SHIPPED_PARITY_CODES:
            name, scale = f"encoder_k{k}_r{r}", PARITY_EPOCHS[ds, k, r] / DEFAULT_EPOCHS
            jobs.append(Job(ds, name, "encoder", k, epoch_scale=scale, parities=r))
        if not ablations:
            continue
        jobs.append(Job(ds, "classifier_nomixup", "base", mixup=False, coding_aware=coding_aware))
        for k in sorted(SHIPPED_KS, reverse=True):
            half = (ENCODER_EPOCH_SCALE if k >= 10 else SMALL_K_EPOCH_SCALE) / 2
            jobs.append(
                Job(ds, f"encoder_nomixup_k{k}", "encoder", k, base="classifier_nomixup", epoch_scale=half)
            )
            jobs.append(Job(ds, f"encoder_latent_k{k}", "encoder", k, loss="latent", epoch_scale=half))
            jobs.append(Job(ds, f"encoder_gan_k{k}", "encoder", k, loss="gan", epoch_scale=half))
            sn_scale = PARM_EPOCH_SCALE if k >= 10 else SMALL_K_EPOCH_SCALE
            jobs.append(Job(ds, f"parm_sn_k{k}", "parm_sn", k, epoch_scale=sn_scale))
    return jobs


def run_job(cfg: RunConfig, job: Job, data: Dataset, coeff: float | None = None) -> Path:
    c = replace(cfg, dataset=job.dataset, epochs=max(1, round(cfg.epochs * job.epoch_scale)))
    base = c.models_dir / job.dataset / f"{job.base}.pt"
    if job.kind == "base":
        spec = base_spec(job.dataset, coeff=coeff)
        mixup_share = mixup_share_for(job.dataset, job.mixup)
        return train_base(c, data, spec, mixup_share, job.name, coding_aware=job.coding_aware)
    if job.kind == "encoder" and job.parities > 1:
        init = c.models_dir / job.dataset / f"encoder_k{job.k}.pt"
        return train_parity_encoders(c, data, base, init, job.k, job.parities, job.name)
    if job.kind == "encoder":
        return train_encoder(c, data, base, job.k, job.loss, job.name)
    if job.kind == "parm_sn":
        return train_parm(c, data, base, job.k, job.name)
    return train_parity_network(c, data, base, job.k, job.name)


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
