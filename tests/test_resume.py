"""Resume and the example order: what ``python -m core resume=RUN_DIR`` refuses (before touching the run), the
order every engine trains on, and sweep directories claimed like run directories. The resumed runs themselves
are in the conformance suite (``test_interrupt_and_resume``, every backend that checkpoints)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import runproto

CORE = [sys.executable, "-m", "core"]


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> Path:
    """A planned run directory (config.yaml, data, plan) to turn into the runs resume meets."""
    run_dir = tmp_path_factory.mktemp("resume") / "run"
    p = subprocess.run([*CORE, "plan_only=true", "offline=true", "data.max_rows=8", f"run_dir={run_dir}"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return run_dir


def as_run(planned: Path, tmp_path: Path, status: str, checkpoint: bool | str = True) -> Path:
    """A copy of the planned run whose result says ``status``, with a complete checkpoint at step 2
    (``"partial"``: one without its completion mark)."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(planned, run_dir)
    result = runproto.read_json(str(run_dir / runproto.RESULT))
    runproto.atomic_write_json(str(run_dir / runproto.RESULT), {**result, "status": status})
    if checkpoint:
        ckpt = run_dir / runproto.CHECKPOINTS / "checkpoint-2"
        ckpt.mkdir(parents=True)
        if checkpoint != "partial":
            runproto.mark_complete(str(ckpt))
    (run_dir / ".anytune-run").write_text("999999999\n")  # a pid no process has
    return run_dir


def resume(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CORE, f"resume={run_dir}", *args], capture_output=True, text=True)


@pytest.mark.parametrize("status, checkpoint, args, words", [
    ("succeeded", True, [], "only an interrupted or failed run resumes"),
    ("planned", True, [], "only an interrupted or failed run resumes"),
    ("interrupted", False, [], "holds no complete checkpoint"),
    ("interrupted", "partial", [], "holds no complete checkpoint"),
    ("interrupted", True, ["train.learning_rate=1e-3"], "train.learning_rate= cannot be changed"),
])
def test_resume_refuses_before_touching_the_run(planned, tmp_path, status, checkpoint, args, words):
    """A run that cannot resume exits 2 with the reason, and its result, metrics and config are left as they were."""
    run_dir = as_run(planned, tmp_path, status, checkpoint)
    (run_dir / runproto.METRICS_FILE).write_text(json.dumps({"step": 3, "loss": 1.0}) + "\n")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    p = resume(run_dir, *args)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert words in p.stderr and "Traceback" not in p.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_resume_refuses_a_directory_in_use(planned, tmp_path):
    """A run directory whose owner is alive (here: this test's process) is not taken over."""
    run_dir = as_run(planned, tmp_path, "interrupted")
    (run_dir / ".anytune-run").write_text(f"{os.getpid()}\n")
    p = resume(run_dir)
    assert p.returncode == 2 and f"in use by a running job (pid {os.getpid()})" in p.stderr


def test_resume_asks_again_for_secrets(planned, tmp_path):
    """Secrets are never saved, so a resumed run must be given them again (and only them)."""
    run_dir = as_run(planned, tmp_path, "interrupted")
    config = (run_dir / runproto.CONFIG).read_text().replace("native: {}", "native:\n    hub_token: '***'")
    (run_dir / runproto.CONFIG).write_text(config)
    p = resume(run_dir)
    assert p.returncode == 2 and "give them again: backend.native.hub_token=..." in p.stderr


def test_resume_of_something_else(tmp_path):
    p = resume(tmp_path)
    assert p.returncode == 2 and "not a run directory" in p.stderr


def test_example_order_joins_seeded_passes_into_full_batches():
    """Passes are permutations seeded seed+p (file order without shuffle), joined and cut at the last step:
    every batch is full, and a batch across an epoch boundary takes the next pass's first examples."""
    assert runproto.example_order(5, 3, 2, 1, 0, False) == [0, 1, 2, 3, 4, 0]
    order = runproto.example_order(7, 5, 2, 2, 3, True)
    assert len(order) == 20 and sorted(order[:7]) == list(range(7)) and sorted(order[7:14]) == list(range(7))
    assert order[:7] != list(range(7)) and order[:7] != order[7:14], "each pass its own shuffle"
    assert order == runproto.example_order(7, 5, 2, 2, 3, True), "the same for every engine"
    assert runproto.steps_and_passes(7, 2, 2, 5, 1) == (5, 3)
    assert runproto.steps_and_passes(300, 8, 1, -1, 1) == (38, 2), "38 full batches reach 4 rows into pass 2"


def test_last_checkpoint_skips_unfinished_saves(tmp_path):
    base = tmp_path / runproto.CHECKPOINTS
    for step, done in ((2, True), (10, True), (12, False)):
        (base / f"checkpoint-{step}").mkdir(parents=True)
        if done:
            runproto.mark_complete(str(base / f"checkpoint-{step}"))
    (base / "checkpoint-14.partial").mkdir()
    assert runproto.last_checkpoint(str(tmp_path)) == (10, f"{runproto.CHECKPOINTS}/checkpoint-10")


def test_two_sweeps_in_one_second_get_two_directories(tmp_path, monkeypatch):
    """A sweep directory is claimed like a run directory: the second sweep of the same second gets ``-2``."""
    from core.__main__ import _claim_sweep_dir

    monkeypatch.chdir(tmp_path)
    argv = ["-m", "train.seed=1,2"]
    first, second = (_claim_sweep_dir(argv)[-1] for _ in range(2))
    a, b = (Path(x.split("=", 1)[1].strip("'")) for x in (first, second))
    assert a != b and (a / ".anytune-run").exists() and (b / ".anytune-run").exists()
