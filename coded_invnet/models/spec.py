"""Model hyper-parameters as frozen dataclasses that round-trip through JSON (stored in checkpoints)."""

from __future__ import annotations

from dataclasses import Field, asdict
from typing import Any, ClassVar, Self


class JsonSpec:
    """Base of the frozen spec dataclasses (ClassifierSpec, EncoderSpec)."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]  # set by @dataclass on every subclass

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Self:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
