"""Checks on a composed job, before any data is read in full, any model loads or any money is spent.

In order: the schema (required fields, allowed values, ranges), fields that have
no effect in this job (``when``), fields the chosen backend's engine does not read,
the steps' capability tables, what the steps need from each other, and offline
availability. Everything here is derived from ``core/schema.py`` and the tables.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterable

from omegaconf import MISSING, DictConfig, OmegaConf

from core.capabilities import FEATURES, READABLE, default_of, schema_fields
from core.errors import ConfigError, UnreadField, UnsupportedFeature
from core.step import Step

RANGE_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def value_of(cfg: DictConfig, key: str) -> Any:
    """The job's plain value of a ``section.name`` field (lists and dicts as plain containers)."""
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def check_field(key: str, value: Any, f: Any) -> None:
    """One value against its field's ``choices`` and ``range`` metadata.

    :raises ConfigError: naming the field and the allowed values or range.
    """
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError.bad_value(key, value, choices)
    bounds = f.metadata.get("range") or {}
    if value is None or not bounds:
        return
    ok = all({"ge": value >= b, "gt": value > b, "le": value <= b, "lt": value < b}[op] for op, b in bounds.items())
    if not ok:
        want = " and ".join(f"{RANGE_TEXT[op]} {b:g}" for op, b in bounds.items())
        raise ConfigError(f"{key}={value!r} is out of range: it must be {want}")


def check_values(cfg: DictConfig) -> None:
    """Every required field is set, every ``choices`` field holds one of them, every number is in its range.

    :raises ConfigError: naming the field and the allowed values or range.
    """
    for key, f in schema_fields().items():
        section, name = key.split(".")
        if OmegaConf.is_missing(cfg[section], name):
            raise ConfigError(f"{key} is required (set {key}=...)")
        check_field(key, cfg[section][name], f)
    if cfg.train.max_steps == 0 or (cfg.train.max_steps < 0 and cfg.train.epochs <= 0):
        raise ConfigError("set train.max_steps > 0 or train.epochs > 0 (train.max_steps=-1 runs train.epochs)")


def check_node(step: Step) -> None:
    """A step's own config node against its ``config_class`` (choices and ranges), e.g. ``export.merged.dtype``."""
    import dataclasses

    prefix = "backend" if step.group == "backend" else f"{step.group}.{step.name}"
    for f in dataclasses.fields(step.config_class):
        if f.name in step.config:
            check_field(f"{prefix}.{f.name}", step.config[f.name], f)


def is_default(cfg: DictConfig, key: str) -> bool:
    """True if ``key`` holds its schema default."""
    default = default_of(schema_fields()[key])
    return default is not MISSING and value_of(cfg, key) == default


def check_applies(cfg: DictConfig) -> None:
    """A field set away from its default in a job where it has no effect is an error, not a silent no-op
    (``peft.r=8`` with ``peft.type=none``, ``method.packing=true`` with DPO)."""
    for key, f in schema_fields().items():
        when = f.metadata.get("when")
        if not when or is_default(cfg, key):
            continue
        for other, values in when.items():
            if value_of(cfg, other) not in values:
                raise ConfigError(f"{key}={value_of(cfg, key)!r} has no effect with {other}={value_of(cfg, other)}; "
                                  f"it applies to {other}={'|'.join(values)} only: leave it at its default")


def applies(cfg: DictConfig, key: str) -> bool:
    """True if field ``key`` has an effect in this job (its ``when`` condition holds)."""
    when = schema_fields()[key].metadata.get("when") if key in schema_fields() else None
    return not when or all(value_of(cfg, k) in v for k, v in when.items())


def check_reads(cfg: DictConfig, backend: type[Step], backends: dict[str, type[Step]]) -> None:
    """Refuse a canonical field set away from its default that the backend's engine does not read,
    naming the backends that do. Value features are left to :func:`check_capabilities`."""
    for key in READABLE:
        if key in FEATURES:  # value features: the capability table says which values the backend accepts
            continue
        if backend.capabilities.reads_field(key) or is_default(cfg, key):
            continue
        if not applies(cfg, key):
            continue
        able = sorted(n for n, b in backends.items() if b.capabilities.reads_field(key))
        raise UnreadField(backend.name, key, value_of(cfg, key), able)


def features_of(cfg: DictConfig, kind: str) -> dict[str, Any]:
    """The job's value for every capability feature."""
    values = {}
    for feature in FEATURES:
        if feature == "data.kind":
            values[feature] = kind
        elif feature == "data.eval":
            values[feature] = bool(cfg.data.eval) or cfg.data.eval_fraction > 0
        else:
            values[feature] = value_of(cfg, feature)
    return values


def check_capabilities(cfg: DictConfig, step: type[Step], peers: dict[str, type[Step]], kind: str,
                       only_listed: bool = False, skip: tuple[str, ...] = ()) -> None:
    """Refuse any feature value the step's capability table does not list, naming the peers that can.

    :param peers: the steps of the same group (for the message).
    :param only_listed: check only features the table lists (exporters and evaluators restrict what they name).
    :param skip: features not to check (``data.eval`` when only a later evaluator uses the held-out data).
    """
    values = features_of(cfg, kind)
    caps = step.capabilities
    for feature, value in sorted(values.items(), key=lambda kv: kv[0] != "train.device"):  # the device first
        if feature in skip or (only_listed and feature not in caps.supports):
            continue
        if feature in schema_fields() and not applies(cfg, feature):
            continue
        if value == "auto":  # left to the step (a step that needs no device keeps train.device=auto)
            continue
        if not caps.can(feature, value):
            able = sorted(n for n, b in peers.items() if b.capabilities.can(feature, value))
            why = (f"this machine has no NVIDIA GPU, and {step.name} runs only on one"
                   if feature == "train.device" and value == "cpu" and not cuda_present() else "")
            raise UnsupportedFeature(step.name, feature, value, able, why=why,
                                     kind=step.kind if step.kind != "trainer" else "backend")
    check_gpu_here(cfg, step, peers, values["train.device"])
    for key, device in caps.requires.items():
        feature, value = key.split("=", 1)
        if str(values[feature]).lower() == value.lower() and values["train.device"] != device:
            raise UnsupportedFeature(
                step.name, feature, value,
                sorted(n for n, b in peers.items()
                       if b.capabilities.can(feature, values[feature]) and key not in b.capabilities.requires),
                why=f"needs train.device={device}; this job runs on {values['train.device']}")


def check_gpu_here(cfg: DictConfig, step: type[Step], peers: dict[str, type[Step]], device: Any) -> None:
    """A step that runs only on an NVIDIA GPU (its table lists no ``train.device=cpu``) is refused on a machine
    without one, before anything loads, naming the steps that run here; ``plan_only=true`` still plans.

    :raises ConfigError: naming the steps of the group that run on this machine's CPU.
    """
    allowed = step.capabilities.supports.get("train.device")
    if device != "cuda" or allowed is None or "cpu" in allowed or cfg.get("plan_only") or cuda_present():
        return
    here = sorted(n for n, b in peers.items() if b.capabilities.can("train.device", "cpu"))
    raise ConfigError(f"{step.group}={step.name} needs an NVIDIA GPU (train.device=cuda), and this machine has "
                      f"none; {'the ones that run here, on its CPU: ' + ', '.join(here) if here else 'none runs here'}"
                      f" (plan_only=true writes {step.name}'s plan without a GPU)")


def check_steps(trainer: Step, after: Iterable[Step]) -> None:
    """Exporters and evaluators that need local weights get them from the trainer.

    :raises ConfigError: a remote trainer (no local weights), or ``train.save_artifacts=false``.
    """
    for step in after:
        if "weights" not in step.capabilities.needs:
            continue
        if "weights" not in trainer.capabilities.needs:
            raise ConfigError(f"{step.group}=[{step.name}] needs local model weights, and backend "
                              f"'{trainer.name}' trains remotely (it leaves a hosted model, no local weights)")
        if not trainer.artifacts():
            raise ConfigError(f"{step.group}=[{step.name}] needs the trained weights, and train.save_artifacts=false "
                              "saves none: set train.save_artifacts=true")


def check_heldout(steps: Iterable[Step], present: bool) -> None:
    """A step that needs held-out data gets some.

    :param present: the job has held-out data (``data.eval`` or ``data.eval_fraction > 0``; on a finished
        run: ``data/eval.jsonl``).
    """
    for step in steps:
        if "heldout" in step.capabilities.needs and not present:
            raise ConfigError(f"{step.group}=[{step.name}] needs held-out data, and this job has none: set "
                              "data.eval=<file> or data.eval_fraction=<fraction of train, e.g. 0.1>")


PATH_FIELDS = ("model.name_or_path", "data.train", "data.eval", "data.chat_template")
"""Fields that may hold a local path (``~`` is expanded in them)."""


def expand_paths(cfg: DictConfig) -> None:
    """Expand a leading ``~`` in path fields and ``run_dir``, as a shell would, and make a relative local
    model path absolute: artefacts record their base model (``base_model_name_or_path``), and a path
    relative to where the job ran would not load from anywhere else."""
    for key in (*PATH_FIELDS, "run_dir"):
        value = OmegaConf.select(cfg, key)
        if isinstance(value, str) and value.startswith("~"):
            OmegaConf.update(cfg, key, os.path.expanduser(value))
    name = OmegaConf.select(cfg, "model.name_or_path")
    if isinstance(name, str) and not os.path.isabs(name) and Path(name).exists():
        OmegaConf.update(cfg, "model.name_or_path", str(Path(name).resolve()))


def looks_like_path(name: str) -> bool:
    """True if ``name`` is meant as a local path, not a hub id (``org/name``)."""
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..") or name.count("/") > 1


def check_model_path(cfg: DictConfig) -> None:
    """A path-like model.name_or_path must exist (else it would be taken for a hub id, and fail far later)."""
    name = str(cfg.model.name_or_path)
    if looks_like_path(name) and not Path(name).expanduser().exists():
        raise ConfigError(f"model.name_or_path={name}: no such file or directory (a hub id looks like org/name)")


def cuda_present() -> bool:
    """True if this machine has an NVIDIA GPU (checked without importing torch)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def resolve_auto(cfg: DictConfig) -> None:
    """Replace train.device/precision ``auto`` with what this machine has (for steps that need a device)."""
    if cfg.train.device == "auto":
        cfg.train.device = "cuda" if cuda_present() else "cpu"
    if cfg.train.precision == "auto":
        cfg.train.precision = "bf16" if cfg.train.device == "cuda" else "fp32"
    if cfg.train.device == "cpu" and cfg.train.precision == "fp16":
        raise ConfigError("train.precision=fp16 needs train.device=cuda; use fp32 or bf16 on CPU")


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
