"""Composition glue: the schema in Hydra's ConfigStore, resolvers, and friendly config errors."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from core.errors import ConfigError
from core.schema import BackendConfig, JobConfig, SECTIONS

ASSETS = Path(__file__).parent / "assets"
SECRET = re.compile(r"(api[_-]?key|token|secret|password|credential)", re.I)
_registered = False


def asset(name: str) -> str:
    """Absolute path of a file or folder shipped in core/assets (``${anytune_asset:tiny-llama}``)."""
    path = ASSETS / name
    if not path.exists():
        raise ConfigError(f"no shipped asset '{name}' (looked in {ASSETS})")
    return str(path)


def register() -> None:
    """Store the job schema as ``anytune`` in the ConfigStore and register resolvers (idempotent)."""
    global _registered
    if _registered:
        return
    ConfigStore.instance().store(name="anytune", node=JobConfig)
    OmegaConf.register_new_resolver("anytune_asset", asset, replace=True)
    _registered = True


def fields_of(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


#: Open mappings: ``backend.native.X=v`` and ``data.columns.X=v`` add keys without Hydra's ``+``.
OPEN_MAPPINGS = ("backend.native.", "data.columns.")


def open_mappings(argv: list[str]) -> list[str]:
    """Prefix overrides of keys inside open mappings with ``++`` so they may add new keys."""
    def is_open(arg: str) -> bool:
        key = arg.split("=", 1)[0]
        return "=" in arg and (key.startswith(OPEN_MAPPINGS) or f"{key}." in OPEN_MAPPINGS)

    return [f"++{a}" if is_open(a) else a for a in argv]


def check_overrides(overrides: list[str], backend_classes: dict[str, type]) -> None:
    """Reject unknown keys on the command line (``train.lr=1``) with the allowed fields, before Hydra runs."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides([o for o in overrides if not o.startswith("-")])
    except Exception:
        return  # let Hydra report syntax errors
    backend = next((o.value() for o in parsed if o.key_or_group == "backend" and isinstance(o.value(), str)),
                   "trl")
    top = fields_of(JobConfig)
    for o in parsed:
        key = o.key_or_group
        if o.is_add() or o.is_force_add() or key.startswith("hydra") or o.package:
            continue
        parts = key.split(".")
        if parts[0] not in top:
            raise ConfigError.unknown_key(key, list(top))
        if len(parts) == 1:
            continue
        if parts[0] == "backend":
            cls = backend_classes.get(backend)
            cls = cls.config_class if cls is not None else BackendConfig
            if parts[1] == "native":
                continue
        elif parts[0] in SECTIONS:
            cls = SECTIONS[parts[0]]
        else:
            raise ConfigError(f"'{parts[0]}' has no fields: use {parts[0]}=<value>")
        allowed = fields_of(cls)
        if parts[1] not in allowed:
            raise ConfigError.unknown_key(key, list(allowed), prefix=f"{parts[0]}.")


def check_values(cfg: DictConfig) -> None:
    """Every field with ``choices`` metadata holds one of them; a missing required field is named."""
    for section, cls in SECTIONS.items():
        for name, f in fields_of(cls).items():
            if OmegaConf.is_missing(cfg[section], name):
                raise ConfigError(f"{section}.{name} is required (set {section}.{name}=...)")
            choices = f.metadata.get("choices")
            value = cfg[section][name]
            if choices and value not in choices:
                raise ConfigError.bad_value(f"{section}.{name}", value, choices)
    for key, lo in (("train.batch_size", 1), ("train.grad_accum", 1), ("train.max_length", 8),
                    ("peft.r", 1), ("train.logging_steps", 1)):
        if OmegaConf.select(cfg, key) < lo:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)} must be >= {lo}")
    if not 0 <= cfg.data.eval_fraction < 1:
        raise ConfigError(f"data.eval_fraction={cfg.data.eval_fraction} must be in [0, 1)")
    if cfg.train.max_steps <= 0 and cfg.train.epochs <= 0:
        raise ConfigError("set train.max_steps > 0 or train.epochs > 0")


def redacted(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as a plain dict, values of secret-looking keys replaced."""
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: ("***" if SECRET.search(str(k)) and v not in (None, "") else walk(v))
                    for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(OmegaConf.to_container(cfg, resolve=True))
