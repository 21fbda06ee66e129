"""Sweeps under Hydra's launchers (conf/hydra/launcher/): the same cross-engine sweep, with a failing job, under
joblib (``parallel``), submitit's local executor (``submitit``) and a local Ray (``ray_local``); the basic
launcher runs it in test_compare.py and test_cli.py. The sweep's exit code comes from its jobs' results,
which the launchers write in other processes."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from core import compare, runproto
from core.__main__ import EXIT_DATA, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, final_code, objective, sweep_codes
from core.rundir import MARKER

CORE = [sys.executable, "-m", "core", "offline=true"]
SWEEP = ["backend=trl,torchtune", "peft=lora,qlora", "train.max_steps=2", "data.max_rows=8"]
"""Four jobs: LoRA trains on each engine; QLoRA is refused on CPU (a failed job, recorded, the others go on)."""


def job(sweep, name, status=None, error_type=None):
    """A job directory as a launcher leaves it: claimed, with its result unless the job died."""
    (sweep / name).mkdir(parents=True)
    (sweep / name / MARKER).write_text("1\n")
    if status:
        runproto.atomic_write_json(str(sweep / name / "result.json"), {"status": status, "error_type": error_type})


def test_exit_code_of_a_sweep_comes_from_its_jobs_results(tmp_path):
    job(tmp_path, "0-trl-sft", "succeeded")
    job(tmp_path, "1-torchtune-sft", "succeeded")
    (tmp_path / ".submitit").mkdir()  # a launcher's own folder is no job
    assert sweep_codes(tmp_path) == [EXIT_OK, EXIT_OK] and final_code(sweep_codes(tmp_path)) == EXIT_OK
    job(tmp_path, "2-trl-sft")  # claimed, never finished (a worker killed): failed
    assert final_code(sweep_codes(tmp_path)) == EXIT_FAILED
    job(tmp_path, "3-trl-sft", "interrupted")
    assert final_code(sweep_codes(tmp_path)) == EXIT_INTERRUPTED
    assert final_code([EXIT_DATA]) == EXIT_DATA  # one job: its own code


def test_objective_is_the_held_out_loss_and_nan_for_a_failed_job():
    assert objective({"status": "succeeded", "eval": {"heldout": {"loss": 1.5}}, "final": {"eval_loss": 2.0}}) == 1.5
    assert objective({"status": "succeeded", "final": {"eval_loss": 2.0}}) == 2.0
    nan = objective({"status": "failed", "final": {"eval_loss": 2.0}})
    assert nan != nan
    nan = objective({"status": "succeeded", "final": {"last_loss": 2.0}})
    assert nan != nan


SECRET = "hf_not_a_real_token_123"


@pytest.mark.slow
@pytest.mark.parametrize("launcher,tracked", [("parallel", True), ("submitit", False), ("ray_local", False)])
def test_cross_engine_sweep_under_a_launcher(tmp_path, launcher, tracked):
    """The sweep, its failed jobs recorded, its report, its exit code; under joblib also tracked (MLflow and
    Trackio from the worker processes, tests/test_tracking.py has the rest) with a secret on the command line
    that no file may hold (one sweep of each launcher keeps the suite's time down)."""
    pytest.importorskip({"parallel": "hydra_plugins.hydra_joblib_launcher",
                         "submitit": "hydra_plugins.hydra_submitit_launcher",
                         "ray_local": "hydra_plugins.hydra_ray_launcher"}[launcher])
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    extra = []
    if tracked:
        pytest.importorskip("mlflow")
        pytest.importorskip("trackio")
        env.update(ANYTUNE_TRACKERS="mlflow,trackio", MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db",
                   TRACKIO_DIR=str(tmp_path / "trackio"), TRACKIO_PROJECT="sweep")
        extra = [f"backend.native.hub_token={SECRET}"]
    p = subprocess.run([*CORE, "-m", f"hydra/launcher={launcher}", *SWEEP, *extra], capture_output=True,
                       text=True, cwd=tmp_path, timeout=600, env=env)
    assert p.returncode == EXIT_FAILED, p.stderr[-3000:]  # from the jobs' results: they ran in other processes
    sweep = next((tmp_path / "runs").glob("*/*-sweep"))
    summary = runproto.read_json(str(sweep / "summary.json"))
    assert [(r["job"], r["status"]) for r in summary] == [
        ("0-trl-sft", "succeeded"), ("1-trl-sft", "failed"), ("2-torchtune-sft", "succeeded"),
        ("3-torchtune-sft", "failed")]
    assert "qlora" in summary[1]["error"]
    for name in ("0-trl-sft", "2-torchtune-sft"):
        assert (sweep / name / "artifacts/adapter/adapter_model.safetensors").exists()
    report = runproto.read_json(str(sweep / compare.REPORT_JSON))
    assert [(r["engine"], r["status"]) for r in report["rows"]] == [
        ("trl", "succeeded"), ("trl", "failed"), ("torchtune", "succeeded"), ("torchtune", "failed")]
    assert (sweep / compare.REPORT_HTML).exists() and f"report: {sweep / compare.REPORT_HTML}" in p.stdout
    if tracked:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
        runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("anytune").experiment_id])}
        parent = runs.pop(sweep.name)
        assert {n: r.info.status for n, r in runs.items()} == {"0-trl-sft": "FINISHED", "1-trl-sft": "FAILED",
                                                               "2-torchtune-sft": "FINISHED", "3-torchtune-sft": "FAILED"}
        assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent.info.run_id}
        assert "qlora" in runs["1-trl-sft"].data.tags["anytune.error"]
        assert [len(client.get_metric_history(runs[n].info.run_id, "loss")) for n in sorted(runs)] == [2, 0, 2, 0]
        assert all(r.data.params["backend.native.hub_token"] == "***" for r in runs.values())
        assert "report.html" in {f.path for f in client.list_artifacts(parent.info.run_id)}
        with sqlite3.connect(tmp_path / "trackio" / "sweep.db") as con:
            names = {r[0] for r in con.execute("select distinct run_name from metrics")}
        assert names == {sweep.name, *(f"{sweep.name}/{r['job']}" for r in summary)}
        leaked = [f.relative_to(tmp_path).as_posix() for f in tmp_path.rglob("*")
                  if f.is_file() and SECRET.encode() in f.read_bytes()]
        # torchtune's recipe prints its resolved config, the token resolved from the step's environment, into its
        # own log: the core redacts every step's logs when the step ends (runner.redact_logs)
        assert leaked == [], leaked
        # MLflow's store and artefacts, Trackio's database, multirun.yaml, the run directories' records
