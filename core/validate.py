"""Validation of a composed job against the schema and the chosen backend's capability table.

Runs before any data is read in full, any model loads or any money is spent.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from omegaconf import DictConfig

from core.backend import FEATURES, Backend
from core.errors import ConfigError, UnsupportedFeature


def cuda_present() -> bool:
    """True if this machine has an NVIDIA GPU (checked without importing torch)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def resolve_auto(cfg: DictConfig) -> None:
    """Replace train.device/precision ``auto`` with what this machine has."""
    if cfg.train.device == "auto":
        cfg.train.device = "cuda" if cuda_present() else "cpu"
    if cfg.train.precision == "auto":
        cfg.train.precision = "bf16" if cfg.train.device == "cuda" else "fp32"
    if cfg.train.device == "cpu" and cfg.train.precision == "fp16":
        raise ConfigError("train.precision=fp16 needs train.device=cuda; use fp32 or bf16 on CPU")


def features_of(cfg: DictConfig, kind: str) -> dict[str, object]:
    """The job's value for every capability feature."""
    values = {}
    for feature in FEATURES:
        if feature == "data.kind":
            values[feature] = kind
        elif feature == "data.eval":
            values[feature] = bool(cfg.data.eval) or cfg.data.eval_fraction > 0
        else:
            section, name = feature.split(".")
            values[feature] = cfg[section][name]
    return values


def check_capabilities(cfg: DictConfig, backend: type[Backend], backends: dict[str, type[Backend]],
                       kind: str) -> None:
    """Refuse anything the backend's capability table does not list, naming the backends that can."""
    values = features_of(cfg, kind)
    caps = backend.capabilities
    for feature, value in values.items():
        if feature == "method.loss_type" and cfg.method.name != "dpo":
            continue  # only DPO reads it
        if not caps.can(feature, value):
            able = sorted(n for n, b in backends.items() if b.capabilities.can(feature, value))
            raise UnsupportedFeature(backend.name, feature, value, able)
    for key, device in caps.requires.items():
        feature, value = key.split("=", 1)
        if str(values[feature]).lower() == value.lower() and values["train.device"] != device:
            raise UnsupportedFeature(
                backend.name, feature, value,
                sorted(n for n, b in backends.items()
                       if b.capabilities.can(feature, values[feature]) and key not in b.capabilities.requires),
                why=f"needs train.device={device}; this job runs on {values['train.device']}")


def check_offline(cfg: DictConfig) -> None:
    """With offline=true, a model that is neither local nor cached is an error, not a hang."""
    if not cfg.offline:
        return
    name = cfg.model.name_or_path
    if Path(name).expanduser().exists():
        return
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")
    if (hub.expanduser() / f"models--{name.replace('/', '--')}").exists():
        return
    raise ConfigError(f"offline=true but model.name_or_path={name} is neither a local directory nor in the "
                      f"Hugging Face cache ({hub}); download it first or set offline=false")


def validate(cfg: DictConfig, backend: type[Backend], backends: dict[str, type[Backend]], kind: str) -> None:
    """Checks that need no engine, after ``check_values``: auto settings, capabilities, offline."""
    resolve_auto(cfg)
    check_capabilities(cfg, backend, backends, kind)
    check_offline(cfg)
