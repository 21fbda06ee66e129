"""MLflow tracker (``ANYTUNE_TRACKERS=mlflow``; MLflow 3.x): one MLflow run per job, nested under one parent run per
sweep. The store is MLflow's own choice: ``MLFLOW_TRACKING_URI`` (default ``sqlite:///mlflow.db`` in the current
directory; a ``file:`` store needs ``MLFLOW_ALLOW_FILE_STORE=true``), the experiment ``MLFLOW_EXPERIMENT_NAME``
(default ``anytune``). Look at it with ``mlflow ui --backend-store-uri sqlite:///mlflow.db``."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import core
from plugins import tracking

NAME = "mlflow"
PARENT_TAG = "mlflow.parentRunId"
_runs: dict[str, tuple[Any, str]] = {}
"""Open runs: run directory -> (MlflowClient, run id)."""


def _client(uri: str | None = None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment(client) -> str:
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "anytune")
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # created meanwhile by a parallel job
        return client.get_experiment_by_name(name).experiment_id


def _log(client, run_id: str, params: dict[str, Any] | None = None, metrics: dict[str, float] | None = None,
         step: int = 0) -> None:
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    params = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
    metrics = [Metric(k, v, now, step) for k, v in (metrics or {}).items()]
    for i in range(0, max(len(params), len(metrics)), 100):  # MLflow's batch limits
        client.log_batch(run_id, params=params[i:i + 100], metrics=metrics[i:i + 100])


def _files(client, run_id: str, root: Path, files: list[Path]) -> None:
    for f in files:
        rel = f.relative_to(root).parent
        client.log_artifact(run_id, str(f), artifact_path=None if str(rel) == "." else str(rel))


@core.hookimpl
def on_sweep_start(sweep_dir: str, config: dict[str, Any]) -> None:
    """Open the sweep's parent run (its params: the config the jobs share) and record it for the jobs."""
    if not tracking.enabled(NAME):
        return
    import mlflow

    uri = mlflow.get_tracking_uri()  # absolute: jobs may run in another directory (Ray) or on another machine
    client = _client(uri)
    run = client.create_run(_experiment(client), run_name=Path(sweep_dir).name,
                            tags={"anytune.sweep_dir": sweep_dir, "anytune.kind": "sweep"})
    _log(client, run.info.run_id, params=tracking.flatten(config))
    tracking.record_parent(sweep_dir, NAME, {"tracking_uri": uri, "run_id": run.info.run_id,
                                             "experiment_id": run.info.experiment_id})


@core.hookimpl
def on_run_start(run_dir: str, config: dict[str, Any]) -> None:
    """Open the job's run (a child of its sweep's), with the canonical config as parameters."""
    if tracking.enabled(NAME):
        _open(run_dir, config)


def _open(run_dir: str, config: dict[str, Any]) -> None:
    parent = tracking.parent(run_dir, NAME) or {}
    client = _client(parent.get("tracking_uri"))
    tags = {"anytune.run_dir": run_dir, "anytune.kind": "job",
            "anytune.backend": str((config.get("backend") or {}).get("name"))}
    if parent:
        tags[PARENT_TAG] = parent["run_id"]
    run = client.create_run(parent.get("experiment_id") or _experiment(client), run_name=Path(run_dir).name,
                            tags=tags)
    _runs[run_dir] = (client, run.info.run_id)
    _log(client, run.info.run_id, params=tracking.flatten(config))


@core.hookimpl
def on_metrics(run_dir: str, metrics: dict[str, Any]) -> None:
    """Log one ``metrics.jsonl`` row at its step."""
    if run_dir in _runs:
        client, run_id = _runs[run_dir]
        _log(client, run_id, metrics=tracking.numbers(metrics), step=int(metrics.get("step") or 0))


@core.hookimpl
def on_step_end(run_dir: str, step: str, kind: str, outcome: dict[str, Any]) -> None:
    """Log an evaluator's scores as ``<evaluator>.<score>``."""
    if run_dir in _runs and kind == "evaluator":
        client, run_id = _runs[run_dir]
        _log(client, run_id, metrics={f"{step}.{k}": v for k, v in tracking.numbers(outcome.get("scores") or {},
                                                                                    skip=()).items()})


@core.hookimpl
def on_run_end(run_dir: str, result: dict[str, Any]) -> None:
    """Log the final metrics and the job's files, and close its run with the job's status (a job refused before
    it started gets its run here, so that every job of a sweep is in the tracker)."""
    if run_dir not in _runs:
        if not tracking.enabled(NAME):
            return
        _open(run_dir, tracking.saved_config(run_dir))
    client, run_id = _runs.pop(run_dir)
    final = {f"final.{k}": v for k, v in tracking.numbers(result.get("final") or {}, skip=()).items()}
    for key in ("wall_seconds", "train_seconds", "peak_memory_mb", "trainable_parameters"):
        if isinstance(result.get(key), (int, float)):
            final[key] = float(result[key])
    _log(client, run_id, metrics=final)
    client.set_tag(run_id, "anytune.status", str(result.get("status")))
    if result.get("error"):
        client.set_tag(run_id, "anytune.error", str(result["error"]).splitlines()[0][:500])
    _files(client, run_id, Path(run_dir), tracking.job_files(run_dir))
    status = {"succeeded": "FINISHED", "interrupted": "KILLED"}.get(result.get("status"), "FAILED")
    client.set_terminated(run_id, status=status)


@core.hookimpl
def on_sweep_end(sweep_dir: str, rows: list[dict[str, Any]]) -> None:
    """Attach the comparison report to the sweep's parent run and close it."""
    parent = tracking.parent_of_sweep(sweep_dir, NAME) if tracking.enabled(NAME) else None
    if not parent:
        return
    client = _client(parent["tracking_uri"])
    run_id = parent["run_id"]
    statuses = [r.get("status") for r in rows]
    client.set_tag(run_id, "anytune.jobs", str(len(rows)))
    client.set_tag(run_id, "anytune.failed", str(sum(s != "succeeded" for s in statuses)))
    _files(client, run_id, Path(sweep_dir), tracking.report_files(sweep_dir))
    client.set_terminated(run_id, status="FINISHED")
