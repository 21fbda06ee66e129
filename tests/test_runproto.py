"""The run protocol with a scripted engine: the core alone writes result.json, status from the exit code,
crash -> failed with log tail, interrupt -> interrupted, observers that raise cannot break a job."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import core
import fake_backend
from core import plugins, runner, runproto
from core.conformance import compose

BASE = ["backend=fake", "train.device=cpu", "train.precision=fp32", "data.max_rows=8", "data.eval_fraction=0"]


@pytest.fixture
def reg():
    yield plugins.reset(extra=[fake_backend])
    plugins.reset()


def test_success_writes_contract_files(reg, tmp_path):
    seen = []
    result = runner.run(compose(BASE), tmp_path, reg, display=lambda step, row: seen.append((step, row)))
    assert result["status"] == "succeeded", result
    for name in ("config.yaml", "data/train.jsonl", "data/stats.json", "plan/run.sh", "plan/command.json",
                 "plan/runproto.py", "metrics.jsonl", "result.json", "logs/train.stdout.log",
                 "logs/train.stderr.log", "logs/train.outcome.json"):
        assert (tmp_path / name).exists(), name
    assert seen[0] == ("trainer:fake", None) and seen[-1] == ("trainer:fake", {"status": "succeeded"})
    assert [r["step"] for _, r in seen[1:-1]] == [1, 2, 3]
    on_disk = runproto.read_json(str(tmp_path / "result.json"))
    assert on_disk["status"] == "succeeded" and on_disk["wall_seconds"] > 0
    # one schema for every engine: counts and first/last loss from metrics.jsonl, the engine's own mean loss
    assert on_disk["final"] == {"steps": 3, "tokens": 300, "first_loss": 2.0, "last_loss": 2.0 / 3,
                                "train_loss": 1.2}
    assert on_disk["exit_code"] == 0
    assert on_disk["steps"] == [{"name": "fake", "kind": "trainer", "status": "succeeded", "exit_code": 0,
                                 "seconds": on_disk["steps"][0]["seconds"]}]


def test_a_diverged_run_is_stopped_and_failed(reg, tmp_path):
    """A NaN loss in metrics.jsonl: the core stops the engine (which would train on) and the run fails, naming
    the step."""
    started = time.time()
    result = runner.run(compose(BASE + ["backend.native.mode=diverge"]), tmp_path, reg)
    assert time.time() - started < 60  # the engine would have run until stopped
    assert result["status"] == "failed", result
    assert "training diverged (loss is nan at step 2" in result["error"]


@pytest.mark.parametrize("row,precision,why", [
    ({"step": 3, "loss": 1.0, "grad_norm": float("inf")}, "bf16", "grad_norm is inf at step 3"),
    ({"step": 3, "loss": 1.0, "grad_norm": float("inf")}, "fp16", None),  # the loss scaler skips such steps
    ({"step": 4, "loss": float("nan")}, "fp16", "loss is nan at step 4"),
    ({"step": 1, "loss": 1.0, "grad_norm": 0.5}, "bf16", None),
    ({"step": 1, "eval_loss": 1.0}, "fp32", None),
])
def test_divergence(row, precision, why):
    assert runner.divergence(row, precision) == why


def test_status_comes_from_the_exit_code_not_the_worker(reg, tmp_path):
    """A worker that exits 0 and writes no outcome file succeeded; it never has to write result.json."""
    result = runner.run(compose(BASE + ["backend.native.mode=silent"]), tmp_path, reg)
    assert result["status"] == "succeeded" and result["exit_code"] == 0
    assert result["final"] == {}


def test_crash_gives_failed_with_log_tail(reg, tmp_path):
    result = runner.run(compose(BASE + ["backend.native.mode=crash"]), tmp_path, reg)
    assert result["status"] == "failed" and result["error_type"] == "StepFailed"
    assert result["exit_code"] == 3
    assert "boom: the engine fell over" in result["error"]
    assert runproto.read_json(str(tmp_path / "result.json"))["status"] == "failed"


def test_validation_failure_recorded_before_engine(reg, tmp_path):
    result = runner.run(compose(BASE + ["method=dpo", "data=demo_pref"]), tmp_path, reg)
    assert result["status"] == "failed" and result["error_type"] == "UnsupportedFeature"
    assert "trl" in result["error"]
    assert not (tmp_path / "plan").exists() and not (tmp_path / "metrics.jsonl").exists()
    assert (tmp_path / "config.yaml").exists()


def test_plan_only_runs_nothing(reg, tmp_path):
    result = runner.run(compose(BASE + ["plan_only=true"]), tmp_path, reg)
    assert result["status"] == "planned"
    assert (tmp_path / "plan" / "child.py").exists() and not (tmp_path / "metrics.jsonl").exists()


class Raising:
    """An observer whose every lifecycle hook raises."""

    calls = 0

    @core.hookimpl
    def on_metrics(self, run_dir, metrics):
        Raising.calls += 1
        raise RuntimeError("tracker is down")

    @core.hookimpl
    def on_run_start(self, run_dir, config):
        raise RuntimeError("tracker is down")

    @core.hookimpl
    def on_run_end(self, run_dir, result):
        raise RuntimeError("tracker is down")


def test_raising_observer_cannot_break_the_job(tmp_path, capfd):
    reg = plugins.reset(extra=[fake_backend, Raising()])
    try:
        result = runner.run(compose(BASE), tmp_path, reg)
    finally:
        plugins.reset()
    assert result["status"] == "succeeded", result
    assert Raising.calls == 3  # called for every row, never unregistered, never fatal
    err = capfd.readouterr().err
    assert err.count("raised in on_metrics") == 1  # reported once
    assert "tracker is down" in err


def test_ctrl_c_stops_child_and_records_interrupted(tmp_path):
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
        import fake_backend
        from core import plugins, runner
        from core.conformance import compose
        reg = plugins.reset(extra=[fake_backend])
        runner.run(compose({BASE + ['backend.native.mode=slow']!r}), {str(tmp_path)!r}, reg)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 60
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3) and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # like Ctrl-C: the whole foreground group
    assert proc.wait(timeout=60) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "interrupted" and result["exit_code"] in (130, -signal.SIGINT)


def test_metrics_tail_reads_only_complete_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    tail = runner.MetricsTail(path)
    assert tail.read() == []
    path.write_text('{"step": 1}\n{"step"')
    assert tail.read() == [{"step": 1}]
    with open(path, "a") as f:
        f.write(': 2}\n')
    assert tail.read() == [{"step": 2}]


@pytest.mark.parametrize("raise_, code", [(None, 0), (KeyboardInterrupt, 130), (RuntimeError, 1)])
def test_outcome_is_written_whatever_happens(tmp_path, raise_, code):
    outcome = runproto.Outcome(("pytest",), path=str(tmp_path / "outcome.json"))
    with outcome as out:
        out["final"] = {"steps": 3}
        if raise_:
            raise raise_("engine fell over")
    on_disk = runproto.read_json(str(tmp_path / "outcome.json"))
    assert outcome.code == code
    assert on_disk["final"] == {"steps": 3} and on_disk["versions"]["pytest"]
    assert ("engine fell over" in on_disk.get("error", "")) == (raise_ is RuntimeError)


REMOTE_CHILD = r'''
import sys
sys.path.insert(0, "plan")
import runproto
with runproto.Outcome() as out:
    out["artifacts"] = {"model": runproto.remote_artifact("ft:tiny:acme::abc123", "fakecloud")}
    out["final"] = {"train_loss": 0.5}
'''


class RemoteBackend(core.Trainer):
    """A remote trainer: needs no local tokenizer, template, weights or device; leaves a hosted model id."""

    name = "remote"
    config_class = fake_backend.FakeConfig
    capabilities = core.Capabilities(supports={"data.kind": frozenset({"messages"})},
                                     reads=core.fields("model.name_or_path", "method.name", "train.epochs"))

    def artifacts(self):
        return {}  # known only once the remote job ran

    def plan(self, ctx):
        assert ctx.data.template is None and "tokens" not in {k for k, v in ctx.data.stats.items() if v}
        return core.Plan(command=[sys.executable, ctx.write("remote.py", REMOTE_CHILD)],
                         files=ctx.ship(core.runproto))


class RemotePlugin:
    @core.hookimpl
    def register_backends(self, register):
        register(RemoteBackend)


def test_a_remote_trainer_gets_no_local_work_and_leaves_a_hosted_model(tmp_path):
    reg = plugins.reset(extra=[RemotePlugin()])
    try:
        job = ["backend=remote", "model.name_or_path=tiny-hosted-model", "data.max_rows=8"]
        result = runner.run(compose(job), tmp_path / "run", reg)
        assert result["status"] == "succeeded", result.get("error")
        assert result["artifacts"] == {"model": {"id": "ft:tiny:acme::abc123", "provider": "fakecloud"}}
        stats = runproto.read_json(str(tmp_path / "run/data/stats.json"))
        assert stats["tokens"] is None and stats["chat_template"] is None  # no tokenizer, no template
        assert not (tmp_path / "run/data/chat_template.jinja").exists()
        from omegaconf import OmegaConf

        saved = OmegaConf.load(tmp_path / "run/config.yaml")
        assert saved.train.device == "auto" and saved.train.precision == "auto"  # no device work
        refused = runner.run(compose(job + ["export=[merged]"]), tmp_path / "refused", reg)
        assert refused["status"] == "failed" and "trains remotely" in refused["error"]
        unread = runner.run(compose(job + ["peft.r=8"]), tmp_path / "unread", reg)
        assert unread["error_type"] == "UnreadField" and "does not read peft.r" in unread["error"]
    finally:
        plugins.reset()


@pytest.mark.parametrize("mode", ["ok", "chatty"])
def test_no_secret_reaches_any_file_of_the_run_directory(reg, tmp_path, mode):
    """A secret given as a native key reaches the engine's process through its environment, and no file of the
    run directory (config, plan, logs, result) holds it, even when the engine prints it (its logs are redacted)."""
    secret = "sk-live-0123456789abcdef"
    result = runner.run(compose(BASE + [f"backend.native.api_key={secret}", f"+backend.native.mode={mode}"]),
                        tmp_path, reg)
    assert result["status"] == "succeeded", result
    outcome = runproto.read_json(str(tmp_path / "logs" / "train.outcome.json"))
    assert outcome["secret_lengths"]["api_key"] == len(secret)  # the worker had it
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaks == []
    if mode == "chatty":
        assert '"api_key": "***"' in (tmp_path / "logs" / "train.stderr.log").read_text()
    assert "${oc.env:ANYTUNE_SECRET_API_KEY}" in (tmp_path / "plan" / "fake.json").read_text()


def test_trl_plan_names_a_secret_without_holding_it(tmp_path):
    secret = "hf_0123456789secret"
    result = runner.run(compose(["plan_only=true", "data.max_rows=8", f"backend.native.hub_token={secret}"]),
                        tmp_path)
    assert result["status"] == "planned", result.get("error")
    assert [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()] == []
    args = runproto.read_json(str(tmp_path / "plan" / "trl_args.json"))["args"]
    assert args["hub_token"] == "${oc.env:ANYTUNE_SECRET_HUB_TOKEN}"


@pytest.mark.slow
def test_a_real_engine_that_diverges_is_stopped(reg, tmp_path):
    """TRL training the tiny model with one weight set to NaN: its loss is NaN from step 1 (TRL would log the
    mean of earlier losses and train on); the core stops it and the run fails."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    model_dir = tmp_path / "nan-llama"
    shutil.copytree(Path(core.__file__).parent / "assets" / "tiny-llama", model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    model.save_pretrained(model_dir)
    result = runner.run(compose(["backend=trl", f"model.name_or_path={model_dir}", "train.device=cpu",
                                 "train.precision=fp32", "data.max_rows=64", "data.eval_fraction=0",
                                 "train.max_steps=200", "train.save_artifacts=false"]), tmp_path / "run", reg)
    assert result["status"] == "failed", result
    assert "training diverged" in result["error"] and "at step 1" in result["error"], result["error"]
    assert result["final"]["steps"] < 200
