"""Field helpers for the structured configs: declare a field's allowed values next to its default.

A config dataclass says `lr: float = at_least(0.0, default=1e-5)` or
`kind: str = one_of("vllm", "openai", default="vllm")`; `terminus.config.validate` reads the
metadata and rejects a bad value with a message that names the key and what is allowed.
"""
from __future__ import annotations

from dataclasses import MISSING, field
from typing import Any


def one_of(*choices: Any, default: Any = MISSING, help: str = "") -> Any:
    """A field whose value must be one of `choices`."""
    return field(default=default, metadata={"choices": tuple(choices), "help": help})


def in_range(lo: float | None = None, hi: float | None = None, *, default: Any = MISSING,
             help: str = "") -> Any:
    """A numeric field that must satisfy lo <= value <= hi (either bound may be None)."""
    return field(default=default, metadata={"min": lo, "max": hi, "help": help})


def at_least(lo: float, *, default: Any = MISSING, help: str = "") -> Any:
    return in_range(lo, None, default=default, help=help)


def greater_than(lo: float, *, default: Any = MISSING, help: str = "") -> Any:
    """A number > lo."""
    return field(default=default, metadata={"min": lo, "exclusive_min": True, "max": None, "help": help})


def positive(*, default: Any = MISSING, help: str = "", hi: float | None = None) -> Any:
    """A number > 0 (and <= hi when given)."""
    return field(default=default, metadata={"min": 0, "exclusive_min": True, "max": hi, "help": help})


def items(factory: Any, help: str = "") -> Any:
    """A list/dict field with a default factory."""
    return field(default_factory=factory, metadata={"help": help})
