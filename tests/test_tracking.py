"""Trackers on the lifecycle hooks (plugins/tracking): MLflow and Trackio against local stores, the hooks driven
directly (a sweep of two jobs); a real sweep tracked from joblib's worker processes, with a secret on the
command line that no store may hold, is tests/test_launchers.py's joblib case."""
from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
from pathlib import Path

import pytest

from core import plugins, runproto

TRACKIO_DIR = os.environ.setdefault("TRACKIO_DIR", tempfile.mkdtemp(prefix="trackio-"))
"""Trackio reads its directory once, when imported: set before it is, never the user's own."""
mlflow = pytest.importorskip("mlflow")
trackio = pytest.importorskip("trackio")

CONFIG = {"backend": {"name": "trl", "native": {"hub_token": "***"}}, "train": {"learning_rate": 2e-4, "seed": 1}}


@pytest.fixture
def stores(tmp_path, monkeypatch):
    """Both trackers on, each writing under tmp_path only."""
    monkeypatch.setenv("ANYTUNE_TRACKERS", "mlflow,trackio")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # the subprocesses'; this process keeps its own
    monkeypatch.setenv("TRACKIO_PROJECT", tmp_path.name)
    monkeypatch.chdir(tmp_path)  # MLflow's artefact store goes beside its database
    return tmp_path


def finished_job(run: Path, losses=(2.0, 1.5)) -> dict:
    """The files a finished job leaves, and its result."""
    (run / "artifacts/adapter").mkdir(parents=True)
    (run / "artifacts/adapter/adapter_model.safetensors").write_bytes(b"weights")
    (run / "artifacts/checkpoints/checkpoint-1").mkdir(parents=True)
    (run / "artifacts/checkpoints/checkpoint-1/optimizer.pt").write_bytes(b"state")
    (run / "config.yaml").write_text("train:\n  seed: 1\n")
    result = {"status": "succeeded", "final": {"last_loss": losses[-1], "steps": len(losses)}, "wall_seconds": 3.0}
    runproto.atomic_write_json(str(run / "result.json"), result)
    return result


def mlflow_runs(uri: str) -> dict[str, object]:
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name("anytune")
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def test_a_sweep_is_a_parent_run_and_each_job_a_child(stores):
    from plugins.tracking import mlflow as mlflow_tracker, trackio as trackio_tracker

    reg = plugins.load(extra=[mlflow_tracker, trackio_tracker], autoload=False)  # the process's registry untouched
    sweep = stores / "sweep"
    sweep.mkdir()
    plugins.notify(reg, "on_sweep_start", sweep_dir=str(sweep), config=CONFIG)
    for name in ("0-trl-sft", "1-torchtune-sft"):
        run = sweep / name
        run.mkdir()
        plugins.notify(reg, "on_run_start", run_dir=str(run), config=CONFIG)
        for step, loss in ((1, 2.0), (2, 1.5)):
            plugins.notify(reg, "on_metrics", run_dir=str(run), metrics={"step": step, "loss": loss, "tokens": 10})
        plugins.notify(reg, "on_step_end", run_dir=str(run), step="heldout", kind="evaluator",
                       outcome={"status": "succeeded", "scores": {"loss": 1.7}})
        plugins.notify(reg, "on_run_end", run_dir=str(run), result=finished_job(run))
    refused = sweep / "2-trl-sft"  # refused at validation: no on_run_start, only its config.yaml and on_run_end
    refused.mkdir()
    (refused / "config.yaml").write_text("peft:\n  type: qlora\n")
    plugins.notify(reg, "on_run_end", run_dir=str(refused), result={"status": "failed", "error": "qlora needs cuda"})
    (sweep / "report.html").write_text("<html>report</html>")
    plugins.notify(reg, "on_sweep_end", sweep_dir=str(sweep), rows=[{"job": "0-trl-sft", "last_loss": 1.5}])
    assert not reg.reported  # no tracker raised

    runs = mlflow_runs(os.environ["MLFLOW_TRACKING_URI"])
    parent, child = runs["sweep"], runs["0-trl-sft"]
    client = mlflow.tracking.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    assert parent.info.status == "FINISHED" and child.info.status == "FINISHED"
    assert {r.data.tags.get("mlflow.parentRunId") for n, r in runs.items() if n != "sweep"} == {parent.info.run_id}
    failed = runs["2-trl-sft"]
    assert failed.info.status == "FAILED" and failed.data.params["peft.type"] == "qlora"
    assert failed.data.tags["anytune.error"] == "qlora needs cuda"
    assert child.data.params["train.learning_rate"] == "0.0002" and child.data.params["backend.native.hub_token"] == "***"
    assert [(m.step, m.value) for m in client.get_metric_history(child.info.run_id, "loss")] == [(1, 2.0), (2, 1.5)]
    assert child.data.metrics["heldout.loss"] == 1.7 and child.data.metrics["final.last_loss"] == 1.5
    files = {f.path for f in client.list_artifacts(child.info.run_id)} | {
        f.path for f in client.list_artifacts(child.info.run_id, "artifacts/adapter")}
    assert {"config.yaml", "result.json", "artifacts/adapter/adapter_model.safetensors"} <= files
    assert "artifacts/checkpoints" not in {f.path for f in client.list_artifacts(child.info.run_id, "artifacts")}
    assert "report.html" in {f.path for f in client.list_artifacts(parent.info.run_id)}

    with sqlite3.connect(Path(TRACKIO_DIR) / f"{stores.name}.db") as con:
        names = {r[0] for r in con.execute("select distinct run_name from metrics")}
    assert names == {"sweep/0-trl-sft", "sweep/1-torchtune-sft", "sweep/2-trl-sft", "sweep"}, names


def test_the_documented_wandb_tracker_is_short_and_works(tmp_path, monkeypatch):
    """docs/tracking.md's W&B example, under 50 lines, loaded as a plugin against a stand-in ``wandb`` module."""
    import re
    import types

    text = (Path(__file__).parents[1] / "docs/tracking.md").read_text()
    code = re.search(r"```python\n(.*?)```", text.split("## Writing another tracker")[1], re.S).group(1)
    assert len(code.splitlines()) < 50
    calls = []

    class Run:
        summary = {}

        def log(self, metrics, step):
            calls.append(("log", step, metrics))

        def save(self, path, base_path, policy):
            calls.append(("save", Path(path).relative_to(base_path).as_posix()))

        def finish(self, exit_code):
            calls.append(("finish", exit_code))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(("init", kw["name"], kw["config"]["train.learning_rate"])) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("ANYTUNE_TRACKERS", "wandb")
    module = types.ModuleType("anytune_wandb")
    exec(compile(code, "docs/tracking.md", "exec"), module.__dict__)
    reg = plugins.load(extra=[module], autoload=False)
    run = tmp_path / "job"
    run.mkdir()
    plugins.notify(reg, "on_run_start", run_dir=str(run), config=CONFIG)
    plugins.notify(reg, "on_metrics", run_dir=str(run), metrics={"step": 1, "loss": 2.0})
    plugins.notify(reg, "on_run_end", run_dir=str(run), result=finished_job(run))
    assert not reg.reported
    assert calls[0] == ("init", "job", 2e-4) and calls[1] == ("log", 1, {"loss": 2.0})
    assert ("save", "artifacts/adapter/adapter_model.safetensors") in calls and calls[-1] == ("finish", 0)
