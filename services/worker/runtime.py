"""Worker runtime (no gRPC): the model run behind optional fault injection."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import numpy as np

from coded_invnet.serving.config import DELAY_KINDS, ServingConfig
from coded_invnet.serving.errors import InvalidInput, PermissionDenied, Unavailable
from coded_invnet.serving.onnx_model import Computed, OnnxModel


@dataclass(frozen=True)
class FaultSpec:
    """Injected faults; the default injects nothing."""

    delay: str = "none"  # none | fixed | exponential
    delay_ms: float = 0.0  # the fixed delay, or the exponential's mean
    delay_probability: float = 0.0  # chance a batch is delayed; 0 with a delay set means always
    failure_probability: float = 0.0
    seed: int = 0  # 0: unseeded

    def __post_init__(self) -> None:
        if self.delay not in DELAY_KINDS:
            raise InvalidInput(f"fault delay {self.delay!r}: must be one of {', '.join(DELAY_KINDS)}")
        if self.delay_ms < 0:
            raise InvalidInput(f"fault delay_ms {self.delay_ms}: must be >= 0")
        for name in ("delay_probability", "failure_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise InvalidInput(f"fault {name} {getattr(self, name)}: must be in [0, 1]")

    @classmethod
    def from_config(cls, cfg: ServingConfig) -> FaultSpec:
        return cls(
            cfg.fault_delay,
            cfg.fault_delay_ms,
            cfg.fault_delay_probability,
            cfg.fault_failure_probability,
            cfg.fault_seed,
        )


class FaultInjector:
    def __init__(self, spec: FaultSpec) -> None:
        self.configure(spec)

    def configure(self, spec: FaultSpec) -> None:
        self.spec = spec
        self._random = random.Random(spec.seed or None)

    def _delay_s(self) -> float:
        spec = self.spec
        if spec.delay == "none" or spec.delay_ms == 0:
            return 0.0
        if spec.delay_probability and self._random.random() >= spec.delay_probability:
            return 0.0
        mean_s = spec.delay_ms / 1000
        return mean_s if spec.delay == "fixed" else self._random.expovariate(1 / mean_s)

    async def apply(self) -> None:
        """Sleep the drawn delay, then fail if so drawn (a slow failure: a worker dying mid-batch)."""
        fail = self.spec.failure_probability > 0 and self._random.random() < self.spec.failure_probability
        delay_s = self._delay_s()
        if delay_s:
            await asyncio.sleep(delay_s)
        if fail:
            raise Unavailable("injected failure")


FAULT_API_OFF = (
    "the fault injection API is off on this worker; start it with CODED_FAULT_API=on (--fault-api on) "
    "to allow SetFaults/GetFaults"
)


class WorkerRuntime:
    """`fault_api`: whether callers may read and change the injected faults at run time; the faults
    configured at start apply either way."""

    def __init__(
        self,
        model: OnnxModel,
        faults: FaultInjector,
        fault_api: bool = False,
        parity_model: OnnxModel | None = None,
    ) -> None:
        self.model = model
        self.parity_model = parity_model  # a ParM pool worker's second model, for the parity batches
        self.faults = faults
        self.fault_api = fault_api

    def load(self) -> None:
        self.model.load()
        if self.parity_model is not None:
            self.parity_model.load()

    def set_faults(self, spec: FaultSpec) -> FaultSpec:
        self.require_fault_api()
        self.faults.configure(spec)
        return self.faults.spec

    def get_faults(self) -> FaultSpec:
        self.require_fault_api()
        return self.faults.spec

    def require_fault_api(self) -> None:
        if not self.fault_api:
            raise PermissionDenied(FAULT_API_OFF)

    async def infer(self, feeds: dict[str, np.ndarray]) -> Computed:
        await self.faults.apply()
        return await self.model.infer(feeds)

    async def infer_parity(self, feeds: dict[str, np.ndarray]) -> Computed:
        assert self.parity_model is not None
        await self.faults.apply()
        return await self.parity_model.infer(feeds)


async def refuse_parity(feeds: dict[str, np.ndarray]) -> Computed:
    raise InvalidInput("a parity batch sent to a ParM data worker: start it with CODED_ROLE=pool or parity")
