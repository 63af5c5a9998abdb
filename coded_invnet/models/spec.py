"""Model hyper-parameters as frozen dataclasses that round-trip through JSON (stored in checkpoints)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Self


class JsonSpec:
    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Self:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
