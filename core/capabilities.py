"""What a step supports, reads and needs: the truth validation checks and the docs' matrix shows.

Everything here is derived from the schema (``core/schema.py``): the value
features (every field with ``choices`` and every boolean of the canonical
sections, plus the data's kind and whether there is eval data) and the fields
an engine may read (every canonical field the core does not read itself).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from fnmatch import fnmatch
from functools import lru_cache
from typing import Any, Mapping

from omegaconf import MISSING

from core.schema import SECTIONS

KINDS = ("messages", "prompt_completion", "preference", "unpaired", "text")
"""Canonical record kinds the data normalises to."""

NEEDS = {
    "tokenizer": "the model's tokenizer files on local disk (token statistics, loss masks)",
    "template": "a chat template of record (data/chat_template.jinja)",
    "weights": "the base model's weights on local disk (and it leaves local artefacts)",
    "device": "a local device and precision (train.device, train.precision resolved from auto)",
    "heldout": "held-out data (data.eval, or data.eval_fraction > 0): refused at validation when the job has none",
}
"""What a step may need from the core; the core skips the work for steps that do not."""


@lru_cache(maxsize=None)
def schema_fields() -> dict[str, dataclasses.Field]:
    """Every canonical field as ``section.name`` -> its dataclass field, in schema order (computed once; read only)."""
    return {f"{s}.{f.name}": f for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


def default_of(f: dataclasses.Field) -> Any:
    """The schema default of a field (``MISSING`` for a required one)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return MISSING


def _features() -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for key, f in schema_fields().items():
        if f.metadata.get("core"):
            continue
        default = default_of(f)
        if f.metadata.get("resolved"):  # auto is replaced by a concrete value before capabilities are checked
            out[key] = [v for v in f.metadata["choices"] if v != "auto"]
        elif "choices" in f.metadata:
            out[key] = [default] + [v for v in f.metadata["choices"] if v != default]
        elif f.type in ("bool", bool):
            out[key] = [default, not default]
    out["data.kind"] = list(KINDS)
    out["data.eval"] = [False, True]
    return out


FEATURES: dict[str, list[Any]] = _features()
"""Value features: field -> allowed values, the schema's default first (for ``train.device`` and
``train.precision``, whose ``auto`` is resolved first, the first concrete value). ``data.kind`` is the canonical
record kind of the data; ``data.eval`` whether there is held-out data."""

READABLE: tuple[str, ...] = tuple(k for k, f in schema_fields().items() if not f.metadata.get("core"))
"""Canonical fields an engine may read; the others are read by the core for every backend."""


def fields(*patterns: str, exclude: tuple[str, ...] = ()) -> frozenset[str]:
    """Readable fields matching glob ``patterns`` (``"train.*"``), minus ``exclude``: for ``Capabilities.reads``.

    :raises ValueError: a pattern or exclusion that matches no readable field (a typo).
    """
    out = set()
    for pattern in (*patterns, *exclude):
        if not any(fnmatch(k, pattern) for k in READABLE):
            raise ValueError(f"{pattern!r} matches no readable field; readable: {', '.join(READABLE)}")
    for key in READABLE:
        if any(fnmatch(key, p) for p in patterns) and not any(fnmatch(key, e) for e in exclude):
            out.add(key)
    return frozenset(out)


@dataclass(frozen=True)
class Capabilities:
    """What a step supports, reads and needs.

    ``supports`` maps fields of :data:`FEATURES` to the values the step accepts; a field
    left out supports only its schema default. ``reads`` lists the canonical fields the
    engine reads (:func:`fields` builds it); any other field set away from its default is
    refused, naming the steps that read it. ``needs`` says what the step needs from the
    core (keys of :data:`NEEDS`). ``requires`` maps ``"field=value"`` to the device that
    value needs, e.g. ``{"peft.type=qlora": "cuda"}``.
    """

    supports: Mapping[str, frozenset] = field(default_factory=dict)
    reads: frozenset = frozenset()
    needs: frozenset = frozenset()
    requires: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [f for f in self.supports if f not in FEATURES] + [n for n in self.needs if n not in NEEDS]
        unknown += [f for f in self.reads if f not in READABLE]
        if unknown:
            raise ValueError(f"unknown capability field(s) {unknown}; features: {', '.join(FEATURES)}; "
                             f"readable: {', '.join(READABLE)}; needs: {', '.join(NEEDS)}")
        unread = [f for f, values in self.supports.items()
                  if f in READABLE and f not in self.reads and set(values) - set(FEATURES[f][:1])]
        if unread:
            raise ValueError(f"capabilities support non-default values of {unread} but do not list them in reads: "
                             "an engine that does not read a field cannot honour its value")

    def allowed(self, feature: str) -> frozenset:
        """Values of ``feature`` this step accepts."""
        return frozenset(self.supports.get(feature, FEATURES[feature][:1]))

    def can(self, feature: str, value: Any) -> bool:
        """True if the step accepts ``feature=value``."""
        return value in self.allowed(feature)

    def reads_field(self, key: str) -> bool:
        """True if the engine reads canonical field ``key``."""
        return key in self.reads
