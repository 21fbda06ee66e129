"""The run protocol with a scripted engine: crash -> failed with log tail; interrupt -> interrupted."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import fake_backend
from core import plugins, runner, workerlib
from core.conformance import compose

BASE = ["backend=fake", "train.device=cpu", "train.precision=fp32", "data.max_rows=8", "data.eval_fraction=0"]


@pytest.fixture
def reg():
    yield plugins.reset(extra=[fake_backend])
    plugins.reset()


def test_success_writes_contract_files(reg, tmp_path):
    seen = []
    result = runner.run(compose(BASE), tmp_path, reg, progress=seen.append)
    assert result["status"] == "succeeded", result
    for name in ("config.yaml", "data/train.jsonl", "data/stats.json", "plan/run.sh", "plan/command.json",
                 "metrics.jsonl", "result.json", "logs/stdout.log", "logs/stderr.log"):
        assert (tmp_path / name).exists(), name
    assert [r["step"] for r in seen] == [1, 2, 3]
    on_disk = workerlib.read_json(str(tmp_path / "result.json"))
    assert on_disk["status"] == "succeeded" and on_disk["wall_seconds"] > 0


def test_crash_gives_failed_with_log_tail(reg, tmp_path):
    result = runner.run(compose(BASE + ["+backend.native.mode=crash"]), tmp_path, reg)
    assert result["status"] == "failed"
    assert result["exit_code"] == 3
    assert "boom: the engine fell over" in result["error"]
    assert workerlib.read_json(str(tmp_path / "result.json"))["status"] == "failed"


def test_validation_failure_recorded_before_engine(reg, tmp_path):
    result = runner.run(compose(BASE + ["method=dpo", "data=demo_pref"]), tmp_path, reg)
    assert result["status"] == "failed" and result["error_type"] == "UnsupportedFeature"
    assert "trl" in result["error"]
    assert not (tmp_path / "plan").exists() and not (tmp_path / "metrics.jsonl").exists()


def test_plan_only_runs_nothing(reg, tmp_path):
    result = runner.run(compose(BASE + ["plan_only=true"]), tmp_path, reg)
    assert result["status"] == "planned"
    assert (tmp_path / "plan" / "child.py").exists() and not (tmp_path / "metrics.jsonl").exists()


def test_ctrl_c_stops_child_and_records_interrupted(tmp_path):
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
        import fake_backend
        from core import plugins, runner
        from core.conformance import compose
        reg = plugins.reset(extra=[fake_backend])
        runner.run(compose({BASE + ['+backend.native.mode=slow']!r}), {str(tmp_path)!r}, reg)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 60
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3) and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # like Ctrl-C: the whole foreground group
    assert proc.wait(timeout=60) == 0
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "interrupted"


def test_metrics_tail_reads_only_complete_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    tail = runner.MetricsTail(path)
    assert tail.read() == []
    path.write_text('{"step": 1}\n{"step"')
    assert tail.read() == [{"step": 1}]
    with open(path, "a") as f:
        f.write(': 2}\n')
    assert tail.read() == [{"step": 2}]


@pytest.mark.parametrize("raise_, status, code", [(None, "succeeded", 0), (KeyboardInterrupt, "interrupted", 130),
                                                  (RuntimeError, "failed", 1)])
def test_recorder_writes_result_whatever_happens(tmp_path, raise_, status, code):
    rec = workerlib.Recorder("x", ("pytest",), path=str(tmp_path / "result.json"))
    with rec as result:
        result["final"] = {"steps": 3}
        if raise_:
            raise raise_("engine fell over")
    on_disk = workerlib.read_json(str(tmp_path / "result.json"))
    assert (on_disk["status"], rec.code) == (status, code)
    assert on_disk["final"] == {"steps": 3} and on_disk["versions"]["pytest"]
    assert ("engine fell over" in on_disk.get("error", "")) == (raise_ is RuntimeError)
