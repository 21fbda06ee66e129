"""backend=openai against a local, stateful server of the fine-tuning API (``tests/openai_api/server.py``) with the
real ``openai`` client: every request and response validated against OpenAI's own API description. The job
goes validating_files -> queued -> running -> succeeded, or fails as the service can (400 for a bad file,
401, 429 then success, 500, a failed job, a cancelled one); Ctrl-C leaves it running and ``attach`` finishes
the run directory. The run directory is asserted after each. Nothing reaches beyond 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import runner, runproto
from core import scores as core_scores
from core.conformance import compose
from openai_api.server import KEY, Server

pytest.importorskip("openai")
pytest.importorskip("openapi_core")


@pytest.fixture
def server():
    s = Server().start()
    yield s
    s.stop()
    assert not s.invalid, "requests or responses outside OpenAI's API description:\n" + "\n".join(s.invalid)


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def job(server: Server, *overrides: str) -> list[str]:
    return ["backend=openai", "model.name_or_path=gpt-4.1-mini-2025-04-14", f"backend.base_url={server.url}",
            "backend.poll_seconds=0.01", "backend.max_retries=2", "data.max_rows=20", *overrides]


def run(server: Server, run_dir: Path, *overrides: str, display=None) -> dict:
    return runner.run(compose(job(server, *overrides)), run_dir, display=display)


def metrics(run_dir: Path) -> list[dict]:
    return runproto.read_jsonl(str(run_dir / runproto.METRICS_FILE))


def state(run_dir: Path) -> dict:
    return runproto.read_json(str(run_dir / "artifacts" / "openai" / "job.json"))


def no_secret_in(run_dir: Path, secret: str = KEY) -> None:
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(errors="replace"), path


def test_a_supervised_job_with_validation_data_runs_to_the_end(server, tmp_path):
    result = run(server, tmp_path, "data.eval_fraction=0.25", "train.epochs=2", "backend.suffix=anytune")
    assert result["status"] == "succeeded", result.get("error")
    # the service saw two uploads and one job, as planned
    posts = [(m, p, s) for m, p, s in server.requests if m == "POST"]
    assert posts == [("POST", "/v1/files", 200)] * 2 + [("POST", "/v1/fine_tuning/jobs", 200)]
    body = server.bodies[0]
    assert body["method"] == {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": "auto"}}}
    assert body["suffix"] == "anytune" and body["seed"] == 42 and body["validation_file"]
    uploaded = server.files[body["training_file"]]["data"].decode()
    assert uploaded == (tmp_path / "plan" / "openai_train.jsonl").read_text()
    # metrics.jsonl: one row per step, in the one schema
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(r["max_steps"] == 6 for r in rows) and rows[2]["epoch"] == 1.0 and rows[-1]["epoch"] == 2.0
    assert rows[0]["loss"] == 2.0 and rows[-1]["loss"] == round(2.0 / 6, 4)
    assert rows[0]["eval_loss"] == 2.2 and rows[2]["eval_loss"] == round(2.1 / 3, 4)  # full validation at epoch end
    assert rows[-1]["token_accuracy"] == 0.6 and set(rows[0]) <= set(runproto.METRICS)
    # result.json: the hosted model, the job, trained tokens, the actual cost
    model = result["artifacts"]["model"]
    jid = next(iter(server.jobs))
    trained = server.jobs[jid]["trained_tokens"]
    assert model["id"] == f"ft:gpt-4.1-mini-2025-04-14:anytune-test::{jid[-6:]}" and model["provider"] == "openai"
    assert model["job"] == jid and model["trained_tokens"] == trained
    assert model["cost_usd"] == round(trained * 5.0 / 1e6, 4)
    assert model["checkpoints"] == [c["fine_tuned_model_checkpoint"] for c in server.checkpoints[jid]]
    assert result["artifacts"]["job"]["id"] == jid and "attach" in result["artifacts"]["job"]
    assert result["final"]["last_loss"] == rows[-1]["loss"] and result["final"]["eval_loss"] == rows[-1]["eval_loss"]
    assert result["final"]["first_loss"] == 2.0
    s = state(tmp_path)
    assert s["status"] == "succeeded" and s["job_id"] == jid and s["fine_tuned_model"] == model["id"]
    assert len(s["checkpoints"]) == 2
    log = (tmp_path / "logs" / "train.stdout.log").read_text()
    assert "Fine-tuning job started" in log and "New fine-tuned model created" in log
    no_secret_in(tmp_path)


def test_a_dpo_job(server, tmp_path):
    result = run(server, tmp_path, "method=dpo", "data=demo_pref", "data.max_rows=12", "method.beta=0.2")
    assert result["status"] == "succeeded", result.get("error")
    assert server.bodies[0]["method"]["dpo"]["hyperparameters"]["beta"] == 0.2
    lines = server.files[server.bodies[0]["training_file"]]["data"].decode().splitlines()
    assert len(lines) == 12 and set(json.loads(lines[0])) == {"input", "preferred_output", "non_preferred_output"}
    assert result["artifacts"]["model"]["id"].startswith("ft:gpt-4.1-mini")


def test_a_file_the_service_refuses(server, tmp_path):
    """400 on job creation: the service's own message reaches the user; no job id is recorded."""
    server.fail = "bad_file"
    result = run(server, tmp_path)
    assert result["status"] == "failed", result
    assert "the API answered 400" in result["error"] and "has invalid format" in result["error"]
    assert "Invalid file format. Line 3" in result["error"]
    assert "job_id" not in state(tmp_path) and len(state(tmp_path)["files"]) == 1
    assert "model" not in result.get("artifacts", {}) and not metrics(tmp_path)


def test_a_wrong_key(server, tmp_path, monkeypatch):
    """401 at the first request: nothing uploaded, the variable to check named, the key in no file."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-987654321")
    result = run(server, tmp_path)
    assert result["status"] == "failed", result
    assert "the API answered 401 (check the key in $OPENAI_API_KEY)" in result["error"]
    assert "Incorrect API key provided" in result["error"]
    assert not server.files and not server.jobs
    no_secret_in(tmp_path, "sk-wrong-key-987654321")


def test_rate_limited_then_accepted(server, tmp_path):
    """429 once: the client's own retry (after the service's retry-after) creates the job; the run succeeds."""
    server.fail = "rate_limit"
    result = run(server, tmp_path)
    assert result["status"] == "succeeded", result.get("error")
    creates = [s for m, p, s in server.requests if (m, p) == ("POST", "/v1/fine_tuning/jobs")]
    assert creates == [429, 200] and len(server.jobs) == 1


def test_server_errors_are_retried_then_reported(server, tmp_path):
    """500 every time: backend.max_retries=2 retries, then the service's message."""
    server.fail = "server_error"
    result = run(server, tmp_path)
    assert result["status"] == "failed", result
    creates = [s for m, p, s in server.requests if (m, p) == ("POST", "/v1/fine_tuning/jobs")]
    assert creates == [500, 500, 500]
    assert "the API answered 500: The server had an error while processing your request." in result["error"]


def test_a_job_that_fails_remotely(server, tmp_path):
    """The job ends failed: its error, verbatim, is the run's error; the steps it ran are in metrics.jsonl."""
    server.fail = "job_failed"
    result = run(server, tmp_path)
    assert result["status"] == "failed", result
    assert ("ended failed: invalid_training_file: The job failed due to an invalid training file. Expected file "
            "to have JSONL format with prompt/completion keys. (param: training_file)") in result["error"]
    assert [r["step"] for r in metrics(tmp_path)] == [1, 2]
    s = state(tmp_path)
    assert s["status"] == "failed" and s["error"]["code"] == "invalid_training_file"
    assert "model" not in result["artifacts"] and result["artifacts"]["job"]["id"] == s["job_id"]


def test_a_job_cancelled_elsewhere(server, tmp_path):
    server.fail = "cancelled"
    result = run(server, tmp_path)
    assert result["status"] == "failed" and "ended cancelled" in result["error"], result
    assert state(tmp_path)["status"] == "cancelled"


def interrupt_at_first_row(label, row):
    """A display that presses Ctrl-C when the first metrics row arrives (the runner's own path for Ctrl-C)."""
    if row and "step" in row:
        raise KeyboardInterrupt


def test_ctrl_c_leaves_the_job_running_and_attach_finishes_the_run(server, tmp_path):
    server.hold = 2
    result = run(server, tmp_path, "train.epochs=2", display=interrupt_at_first_row)
    assert result["status"] == "interrupted", result
    jid = next(iter(server.jobs))
    assert server.jobs[jid]["status"] == "running"  # not cancelled: it is paid for
    assert not any(p.endswith("/cancel") for _, p, _ in server.requests)
    s = state(tmp_path)
    assert s["job_id"] == jid and s["detached"] is True and s["status"] == "running"
    job_artifact = result["artifacts"]["job"]
    assert job_artifact["id"] == jid and job_artifact["attach"] == f"python -m plugins.openai attach {tmp_path}"
    assert "goes on running remotely" in (tmp_path / "logs" / "train.stderr.log").read_text()
    from core.progress import next_commands

    assert [c for c, _ in next_commands(result, tmp_path)] == [
        f"python -m plugins.openai attach {tmp_path}", f"python -m plugins.openai cancel {tmp_path}"]
    # running the plan again without the job id would start (and pay for) a second job: refused
    again = subprocess.run([sys.executable, "plan/openai_worker.py", "plan/openai_job.json"], cwd=tmp_path,
                           capture_output=True, text=True, env={**os.environ, runproto.OUTCOME_ENV: str(tmp_path / "again.json")})
    assert again.returncode == 1 and f"already has job {jid} running" in again.stderr
    assert len(server.jobs) == 1
    # re-attach: the same job followed to its end, the run directory finished by the core
    server.hold = None
    from plugins.openai.__main__ import attach

    assert attach(tmp_path, quiet=True) == 0
    final = runproto.read_json(str(tmp_path / runproto.RESULT))
    assert final["status"] == "succeeded" and final["artifacts"]["model"]["job"] == jid
    assert [r["step"] for r in metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]  # every step once
    assert len(server.jobs) == 1 and len(server.bodies) == 1 and len(server.files) == 1
    assert state(tmp_path)["status"] == "succeeded" and state(tmp_path)["detached"] is False


def test_cancel_and_status_commands(server, tmp_path, capsys):
    from plugins.openai.__main__ import main

    server.hold = 1
    result = run(server, tmp_path, display=interrupt_at_first_row)
    assert result["status"] == "interrupted", result
    jid = state(tmp_path)["job_id"]
    assert main(["status", str(tmp_path)]) == 0 and f"{jid}: running" in capsys.readouterr().out
    assert main(["cancel", str(tmp_path)]) == 0
    assert server.jobs[jid]["status"] == "cancelled" and state(tmp_path)["status"] == "cancelled"
    assert main(["cancel", str(tmp_path)]) == 1  # the service refuses to cancel a finished job: its message
    assert "already completed" in capsys.readouterr().err


def test_the_evaluator_scores_the_fine_tuned_model_through_chat_completions(server, tmp_path):
    """eval=[openai] asks the fine-tuned model each held-out question; the server answers every other
    question of the source file right and the rest wrong, so the exact-match rate is known beforehand."""
    source = [json.loads(x) for x in Path(compose(["data=demo_sft"]).data.train).read_text().splitlines()]
    right = {}
    for i, r in enumerate(source):
        question, answer = r["messages"][0]["content"], r["messages"][-1]["content"]
        right[question] = i % 2 == 0
        server.answers[question] = answer if i % 2 == 0 else "I think it is 12."
    result = run(server, tmp_path, "data.eval_fraction=0.25", "eval=[openai]", "eval.openai.max_rows=5")
    assert result["status"] == "succeeded", result.get("error")
    held_out = runproto.read_jsonl(str(tmp_path / "data" / "eval.jsonl"))[:5]
    asked = [p for m, p, s in server.requests if p == "/v1/chat/completions"]
    assert len(asked) == 5
    scores = json.loads((tmp_path / "eval.json").read_text())["openai"]
    expected = sum(right[r["messages"][0]["content"]] for r in held_out) / 5
    assert scores["exact_match"]["n"] == 5 and scores["exact_match"]["value"] == expected
    assert scores["exact_match"]["scorer"] == "anytune.openai" and not core_scores.check(scores)
    assert expected <= scores["f1"]["value"] < 1.0 or expected == 1.0
    outcome = json.loads((tmp_path / "logs" / "eval-openai.outcome.json").read_text())
    assert outcome["scored"]["billed_tokens"] == 75
    assert result["eval"]["openai"] == scores
    from core.progress import next_commands

    assert [c for c, _ in next_commands(result, tmp_path)] == [f"python -m core.after {tmp_path} eval=[openai]"]


def test_the_evaluator_on_a_finished_run_scores_another_hosted_model_too(server, tmp_path):
    """python -m core.after RUN_DIR eval=[openai]: the run's fine-tuned model, then the base model named in
    eval.openai.model (to compare), each through chat completions; eval.json holds the latest scores."""
    from core import after

    result = run(server, tmp_path, "data.eval_fraction=0.1")
    assert result["status"] == "succeeded", result.get("error")
    tuned = result["artifacts"]["model"]["id"]
    done = runner.run_after(tmp_path, after.compose("openai", ["eval=[openai]", "eval.openai.max_rows=3"]))
    assert done["eval"]["openai"]["exact_match"]["n"] == 3, done
    base = runner.run_after(tmp_path, after.compose("openai", [
        "eval=[openai]", "eval.openai.max_rows=2", "eval.openai.model=gpt-4.1-mini-2025-04-14"]))
    assert base["eval"]["openai"]["exact_match"]["n"] == 2 and base["status"] == "succeeded"
    assert server.chat_models == [tuned] * 3 + ["gpt-4.1-mini-2025-04-14"] * 2
    assert json.loads((tmp_path / "eval.json").read_text())["openai"]["f1"]["n"] == 2  # the latest scores
