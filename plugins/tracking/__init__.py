"""Experiment trackers on anytune's lifecycle hooks: MLflow (``plugins.tracking.mlflow``) and Trackio
(``plugins.tracking.trackio``), each an ``anytune`` entry point like any other plugin (docs/tracking.md).

A tracker is on when its name is in ``ANYTUNE_TRACKERS`` (``ANYTUNE_TRACKERS=mlflow,trackio``); the tool's own
variables choose where it writes (``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``, ``TRACKIO_DIR``,
``TRACKIO_PROJECT``). Every job is one tracked run, with the canonical config (secrets redacted) as its
parameters, every ``metrics.jsonl`` row as step metrics, its final metrics, scores and files; a sweep is one
parent run (MLflow) or group (Trackio) holding the comparison report. The metrics are anytune's, the same on
every engine: no engine's own ``report_to`` is involved.

The sweep's parent is made in the sweep's main process (``on_sweep_start``) and recorded in
``<sweep dir>/tracking.json``, which jobs read wherever a launcher runs them (joblib, submitit, Ray).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from core import runproto

ENV = "ANYTUNE_TRACKERS"
"""Comma-separated names of the trackers that are on (``mlflow``, ``trackio``, a third party's)."""
SWEEP_FILE = "tracking.json"
"""In a sweep directory: each tracker's parent run (``{"mlflow": {...}, "trackio": {...}}``)."""
FILES = ("config.yaml", "result.json", "eval.json", "metrics.jsonl", "data/stats.json")
"""A job's own files logged as artefacts (besides ``artifacts/``, without its checkpoints)."""
REPORT = ("report.md", "report.html", "report.json", "summary.json")
"""A sweep's files logged to its parent run."""


def enabled(name: str) -> bool:
    """Whether the tracker ``name`` is listed in ``ANYTUNE_TRACKERS``."""
    return name in {n.strip() for n in os.environ.get(ENV, "").split(",")}


def flatten(config: dict[str, Any]) -> dict[str, Any]:
    """Nested config -> ``{"train.learning_rate": 0.0002, ...}`` (an empty section leaves nothing)."""
    import core

    return core.flatten(config, empty_leaves=False)


def numbers(row: dict[str, Any], skip: tuple[str, ...] = ("step",)) -> dict[str, float]:
    """The numeric values of a metrics row or result section (booleans and absent values left out)."""
    return {k: float(v) for k, v in row.items()
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)}


def sweep_dir(run_dir: str) -> Path | None:
    """The sweep directory a job belongs to: Hydra's multirun's (in whichever process runs the job), else the run
    directory's parent if a sweep's trackers recorded themselves there, else None (a job on its own)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN":
            return Path(HydraConfig.get().sweep.dir).resolve()
    except Exception:  # no Hydra here (core.after, the runner called directly)
        pass
    up = Path(run_dir).resolve().parent
    return up if (up / SWEEP_FILE).exists() else None


def parent(run_dir: str, tracker: str) -> dict[str, Any] | None:
    """What ``on_sweep_start`` recorded for ``tracker`` in the job's sweep directory, if any."""
    sweep = sweep_dir(run_dir)
    return parent_of_sweep(str(sweep), tracker) if sweep else None


def parent_of_sweep(sweep: str, tracker: str) -> dict[str, Any] | None:
    """What ``on_sweep_start`` recorded for ``tracker`` in ``<sweep>/tracking.json``, if anything."""
    path = Path(sweep) / SWEEP_FILE
    return runproto.read_json(str(path)).get(tracker) if path.exists() else None


def record_parent(sweep: str, tracker: str, info: dict[str, Any]) -> None:
    """Add ``tracker``'s parent run to ``<sweep>/tracking.json`` (atomically; the sweep's main process only)."""
    path = Path(sweep) / SWEEP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = runproto.read_json(str(path)) if path.exists() else {}
    data[tracker] = info
    runproto.atomic_write_json(str(path), data)


def saved_config(run_dir: str) -> dict[str, Any]:
    """The job's ``config.yaml`` (as saved: resolved, secrets redacted), for a job refused before it started."""
    import yaml

    try:
        return yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def job_files(run_dir: str) -> list[Path]:
    """A finished job's files worth keeping in a tracker: its record and its artefacts, not its checkpoints."""
    root = Path(run_dir)
    files = [root / f for f in FILES if (root / f).is_file()]
    artifacts = root / "artifacts"
    if artifacts.is_dir():
        files += sorted(p for p in artifacts.rglob("*") if p.is_file() and "checkpoints" not in p.relative_to(
            artifacts).parts)
    return files


def report_files(sweep: str) -> list[Path]:
    """A sweep's report and summary, and the report's plots."""
    root = Path(sweep)
    plots = sorted((root / "plots").glob("*")) if (root / "plots").is_dir() else []
    return [root / f for f in REPORT if (root / f).is_file()] + plots
