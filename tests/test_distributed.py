"""Several processes through the engine's own launcher (torchrun): a real two-process DDP run on CPU over gloo
trains the single-process curve at the same effective batch, only rank 0 writes, every rank's log is kept;
the plan of a two-node job leaves the rendezvous to the scheduler; backends without it refuse, naming TRL."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core import runproto

CORE = [sys.executable, "-m", "core", "offline=true"]
JOB = ["peft=none", "train.max_steps=4", "train.learning_rate=1e-3", "data.max_rows=24", "train.shuffle=true"]
"""A full fine-tune (every weight's gradient is averaged across ranks), shuffled: the order is anytune's."""


def run(tmp_path: Path, name: str, *overrides: str) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path / name
    p = subprocess.run([*CORE, *JOB, *overrides, f"run_dir={run_dir}"], capture_output=True, text=True, timeout=900)
    return run_dir, p


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_at_the_same_effective_batch(tmp_path):
    one, p1 = run(tmp_path, "one", "train.batch_size=4")
    two, p2 = run(tmp_path, "two", "train.batch_size=2", "train.devices=2")
    assert p1.returncode == 0 and p2.returncode == 0, (p1.stderr[-2000:], p2.stderr[-2000:])
    command = json.loads((two / "plan" / "command.json").read_text())["command"]
    assert "torch.distributed.run" in command and "--nproc-per-node=2" in command
    rows = runproto.read_jsonl(str(two / runproto.METRICS_FILE))
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4], "one row per step: rank 0 alone writes"
    want = [r["loss"] for r in runproto.read_jsonl(str(one / runproto.METRICS_FILE)) if "loss" in r]
    got = [r["loss"] for r in rows if "loss" in r]
    assert got == pytest.approx(want, abs=1e-4, rel=0), (got, want)
    ranks = sorted(p.parent.name for p in (two / "logs" / "ranks").glob("*/attempt_0/*/stderr.log"))
    assert ranks == ["0", "1"], "both ranks ran and their logs are kept"
    result = runproto.read_json(str(two / runproto.RESULT))
    assert result["status"] == "succeeded" and (two / result["artifacts"]["model"]["path"] / "config.json").exists()
    from core import compare

    assert compare.Job.load(two).effective_batch() == compare.Job.load(one).effective_batch() == 4


def test_two_nodes_leave_the_rendezvous_to_the_scheduler(tmp_path):
    run_dir, p = run(tmp_path, "nodes", "train.devices=2", "train.nodes=2", "plan_only=true")
    assert p.returncode == 0, p.stderr
    command = json.loads((run_dir / "plan" / "command.json").read_text())["command"]
    assert "--nnodes=2" in command and "--rdzv-backend=c10d" in command and "--standalone" not in command
    assert "torch.distributed.run" in (run_dir / "plan" / "run.sh").read_text()


@pytest.mark.parametrize("backend, override", [("torchtune", "train.devices=2"), ("trl", "train.strategy=fsdp")])
def test_what_a_backend_cannot_launch_is_refused(tmp_path, backend, override):
    run_dir, p = run(tmp_path, "refused", f"backend={backend}", override)
    assert p.returncode == 2 and not run_dir.exists()
    assert override.split("=")[0] in p.stderr
    if override.startswith("train.devices"):
        assert "trl" in p.stderr, "the backends that can are named"
