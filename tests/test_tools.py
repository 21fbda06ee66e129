"""A newcomer's tools: ``python -m core.doctor`` diagnoses this machine (an environment broken on purpose is
named with its fix) and ``python -m core.explain RUN_DIR`` says what ran, what the engine was told, how it
ended and why (out-of-memory recognised), and what to do next."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core import runproto

CORE = [sys.executable, "-m", "core", "offline=true"]


def doctor(env: dict[str, str] | None = None) -> tuple[int, dict[str, dict]]:
    p = subprocess.run([sys.executable, "-m", "core.doctor", "--json"], capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=600)
    return p.returncode, {c["name"]: c for c in json.loads(p.stdout)}


def test_doctor_on_this_machine():
    code, checks = doctor()
    assert code == 0, [c for c in checks.values() if c["status"] == "fail"]
    assert checks["python"]["status"] == "ok" and sys.executable in checks["python"]["detail"]
    assert checks["torch"]["status"] == "ok" and "CPU build" in checks["torch"]["detail"]
    assert checks["backend trl"]["status"] == "ok" and "trl " in checks["backend trl"]["detail"]


def test_doctor_names_what_is_broken_and_the_fix(tmp_path):
    """The default backend's interpreter lacks its engine (exit 1, the install command), and a managed environment
    whose creation never finished is named with the command that rebuilds it."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    home = tmp_path / "home"
    (home / "envs" / "torchtune-0123456789").mkdir(parents=True)
    code, checks = doctor({"ANYTUNE_PYTHON_TRL": str(tmp_path / "bare" / "bin" / "python"),
                           "ANYTUNE_HOME": str(home)})
    assert code == 1
    trl = checks["backend trl"]
    assert trl["status"] == "fail" and "not installed" in trl["detail"] and "anytune[trl]" in trl["fix"]
    env = checks["environment torchtune-0123456789"]
    assert env["status"] == "warn" and "incomplete" in env["detail"]
    assert env["fix"] == "python -m core.envs create torchtune --force"


def explain(run_dir: Path) -> str:
    p = subprocess.run([sys.executable, "-m", "core.explain", str(run_dir)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory) -> Path:
    """A TRL job the engine refuses mid-way (an argument TRL does not know, passed as a native key)."""
    run_dir = tmp_path_factory.mktemp("explain") / "failed"
    p = subprocess.run([*CORE, "backend.native.not_a_trl_argument=1", "train.max_steps=1", "data.max_rows=8",
                        f"run_dir={run_dir}"], capture_output=True, text=True)
    assert p.returncode == 1, p.stderr
    return run_dir


def test_explain_a_failure(failed_run):
    text = explain(failed_run)
    assert "backend trl" in text and "status failed" in text
    assert "command: " in text and "plan/trl_args.json" in text, "what the engine was told"
    assert "not_a_trl_argument" in text, "the log lines that say why"
    assert "logs/train.stderr.log" in text, "where to read more"
    assert "ran out of memory" not in text


def test_explain_recognises_out_of_memory(failed_run, tmp_path):
    run_dir = tmp_path / "oom"
    shutil.copytree(failed_run, run_dir)
    with open(run_dir / "logs" / "train.stderr.log", "a") as f:
        f.write("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    text = explain(run_dir)
    assert "ran out of memory" in text and "train.gradient_checkpointing=true" in text


def test_explain_an_interrupted_run_says_how_to_resume(failed_run, tmp_path):
    run_dir = tmp_path / "cut"
    shutil.copytree(failed_run, run_dir)
    ckpt = run_dir / runproto.CHECKPOINTS / "checkpoint-3"
    ckpt.mkdir(parents=True)
    runproto.mark_complete(str(ckpt))
    result = runproto.read_json(str(run_dir / runproto.RESULT))
    result.update(status="interrupted", checkpoint={"step": 3, "path": f"{runproto.CHECKPOINTS}/checkpoint-3"})
    result.pop("error", None)
    runproto.atomic_write_json(str(run_dir / runproto.RESULT), result)
    text = explain(run_dir)
    assert "stopped after step 3" in text and f"python -m core resume={run_dir.resolve()}" in text


def test_explain_refuses_what_is_not_a_run(tmp_path):
    p = subprocess.run([sys.executable, "-m", "core.explain", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 2 and "not a run directory" in p.stderr
