"""Trackio tracker (``ANYTUNE_TRACKERS=trackio``): one Trackio run per job in the project ``TRACKIO_PROJECT``
(default ``anytune``), stored in local SQLite under ``TRACKIO_DIR`` (default ``~/.cache/huggingface/trackio``);
no account, nothing leaves the machine. A sweep is a Trackio group (the sweep directory's name) holding its
jobs and one run named after the sweep with the report. Look at it with ``trackio show --project anytune``."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import core
from plugins import tracking

NAME = "trackio"
_runs: dict[str, Any] = {}
"""Open runs: run directory -> trackio.Run."""


def _project() -> str:
    return os.environ.get("TRACKIO_PROJECT", "anytune")


@contextlib.contextmanager
def _quiet():
    """Trackio prints its banners to stdout, which is anytune's summary (``quiet=true``: only the run directory)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _init(name: str, group: str | None, config: dict[str, Any]):
    import trackio

    with _quiet():
        return trackio.init(project=_project(), name=name, group=group, config=config, embed=False,
                            auto_log_gpu=False, auto_log_cpu=False)


def _finish(run) -> None:
    """Finish ``run``; through ``trackio.finish()`` when it is Trackio's current run, which then forgets it (else
    Trackio finishes it again at exit, printing to stdout)."""
    import trackio

    with _quiet():
        if trackio.context_vars.current_run.get() is run:
            trackio.finish()
        else:
            run.finish()


def _files(run, files: list[Path]) -> None:
    with _quiet():
        for f in files:
            run.log_artifact(str(f), name=f.name.replace(".", "-"), type="file", overwrite=True)


@core.hookimpl
def on_sweep_start(sweep_dir: str, config: dict[str, Any]) -> None:
    """Name the sweep's group (the sweep directory's name) for its jobs."""
    if tracking.enabled(NAME):
        tracking.record_parent(sweep_dir, NAME, {"project": _project(), "group": Path(sweep_dir).name})


@core.hookimpl
def on_run_start(run_dir: str, config: dict[str, Any]) -> None:
    """Open the job's run in its sweep's group, with the canonical config."""
    if tracking.enabled(NAME):
        _open(run_dir, config)


def _open(run_dir: str, config: dict[str, Any]) -> None:
    parent = tracking.parent(run_dir, NAME) or {}
    name = f"{parent['group']}/{Path(run_dir).name}" if parent else Path(run_dir).name
    _runs[run_dir] = _init(name, parent.get("group"), tracking.flatten(config))


@core.hookimpl
def on_metrics(run_dir: str, metrics: dict[str, Any]) -> None:
    """Log one ``metrics.jsonl`` row at its step."""
    if run_dir in _runs:
        with _quiet():
            _runs[run_dir].log(tracking.numbers(metrics), step=int(metrics.get("step") or 0))


@core.hookimpl
def on_step_end(run_dir: str, step: str, kind: str, outcome: dict[str, Any]) -> None:
    """Log an evaluator's scores as ``<evaluator>.<score>``."""
    if run_dir in _runs and kind == "evaluator" and outcome.get("scores"):
        with _quiet():
            _runs[run_dir].log({f"{step}.{k}": v for k, v in tracking.numbers(outcome["scores"], skip=()).items()})


@core.hookimpl
def on_run_end(run_dir: str, result: dict[str, Any]) -> None:
    """Log the final metrics, the status and the job's record files, and finish the run (a job refused before it
    started gets its run here)."""
    if run_dir not in _runs:
        if not tracking.enabled(NAME):
            return
        _open(run_dir, tracking.saved_config(run_dir))
    run = _runs.pop(run_dir)
    final = {f"final.{k}": v for k, v in tracking.numbers(result.get("final") or {}, skip=()).items()}
    final["succeeded"] = float(result.get("status") == "succeeded")
    with _quiet():
        run.log(final)
    _files(run, [f for f in tracking.job_files(run_dir) if f.parent == Path(run_dir)])  # not the weights
    _finish(run)


@core.hookimpl
def on_sweep_end(sweep_dir: str, rows: list[dict[str, Any]]) -> None:
    """One run named after the sweep, in its group: each job's final losses and the comparison report."""
    parent = tracking.parent_of_sweep(sweep_dir, NAME) if tracking.enabled(NAME) else None
    if not parent:
        return
    run = _init(parent["group"], parent["group"], {"jobs": len(rows)})
    with _quiet():
        for i, row in enumerate(rows):
            run.log({f"{row['job']}.{k}": v for k, v in tracking.numbers(row, skip=()).items()}, step=i)
    _files(run, tracking.report_files(sweep_dir))
    _finish(run)
