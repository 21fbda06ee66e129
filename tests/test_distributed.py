"""Several processes through the engine's own launcher (torchrun; ``tune run --nproc_per_node`` for torchtune):
a real two-process run on CPU over gloo trains the single-process curve at the same effective batch, only rank 0
writes, every rank's log is kept; the plan of a two-node job leaves the rendezvous to the scheduler; what a
backend cannot launch is refused, naming the backends that can."""
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


TORCHTUNE = ["backend=torchtune", "data.eval_fraction=0"]


@pytest.mark.slow
def test_torchtune_two_processes_equal_one_process_at_the_same_effective_batch(tmp_path):
    """torchtune's full_finetune_distributed (FSDP2 over gloo) under ``tune run --nproc_per_node 2``, with
    strategy ddp (parameters kept whole from forward to backward) and fsdp (resharded after forward)."""
    one, p1 = run(tmp_path, "one", *TORCHTUNE, "train.batch_size=4")
    assert p1.returncode == 0, p1.stderr[-2000:]
    want = [r["loss"] for r in runproto.read_jsonl(str(one / runproto.METRICS_FILE)) if "loss" in r]
    want_tokens = [r["tokens"] for r in runproto.read_jsonl(str(one / runproto.METRICS_FILE))]
    for strategy in ("ddp", "fsdp"):
        two, p2 = run(tmp_path, strategy, *TORCHTUNE, "train.batch_size=2", "train.devices=2",
                      f"train.strategy={strategy}")
        assert p2.returncode == 0, p2.stderr[-2000:]
        command = json.loads((two / "plan" / "command.json").read_text())["command"]
        tune = command[command.index("run") + 1:]
        assert tune[:2] == ["--nproc_per_node", "2"] and "full_finetune_distributed" in tune and "--standalone" in tune
        assert "--nproc_per_node 2" in (two / "plan" / "run.sh").read_text()
        config = (two / "plan" / "torchtune.yaml").read_text()
        assert f"fsdp_reshard_after_forward: {str(strategy == 'fsdp').lower()}" in config
        rows = runproto.read_jsonl(str(two / runproto.METRICS_FILE))
        assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4], "one row per step: rank 0 alone writes"
        got = [r["loss"] for r in rows if "loss" in r]
        assert got == pytest.approx(want, abs=1e-4, rel=0), (strategy, got, want)
        assert [r["tokens"] for r in rows] == want_tokens, "the tokens of every process's batches"
        ranks = sorted(p.parent.name for p in (two / "logs" / "ranks").glob("*/attempt_0/*/stderr.log"))
        assert ranks == ["0", "1"], "both ranks ran and their logs are kept"
        result = runproto.read_json(str(two / runproto.RESULT))
        assert result["status"] == "succeeded" and (two / result["artifacts"]["model"]["path"] / "config.json").exists()
        assert not (two / "artifacts" / "torchtune").exists()
        from core import compare

        assert compare.Job.load(two).effective_batch() == compare.Job.load(one).effective_batch() == 4


def test_torchtune_two_nodes_leave_the_rendezvous_to_the_scheduler(tmp_path):
    run_dir, p = run(tmp_path, "nodes", *TORCHTUNE, "train.devices=2", "train.nodes=2", "plan_only=true")
    assert p.returncode == 0, p.stderr
    command = json.loads((run_dir / "plan" / "command.json").read_text())["command"]
    assert command[command.index("--nnodes") + 1] == "2" and "--rdzv-backend" in command
    assert "--standalone" not in command


def test_torchtune_each_process_takes_its_batch_of_each_micro_step(tmp_path, monkeypatch):
    """Through torchtune's DistributedSampler each process trains exactly the batch TRL's Trainer gives it: the
    ``r``-th ``batch_size`` examples of each micro-step's ``batch_size × processes`` (anytune's order)."""
    import importlib.util

    from torch.utils.data import DistributedSampler

    run_dir, p = run(tmp_path, "order", *TORCHTUNE, "train.devices=2", "train.batch_size=2", "train.grad_accum=2",
                     "plan_only=true")
    assert p.returncode == 0, p.stderr
    monkeypatch.syspath_prepend(str(run_dir / "plan"))
    spec = importlib.util.spec_from_file_location("anytune_torchtune_order", run_dir / "plan" / "anytune_torchtune.py")
    components = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(components)
    monkeypatch.setenv("WORLD_SIZE", "2")
    order = components._order(24, 4, 2, 2, 42, True, 0, processes=2)
    want = runproto.example_order(24, 4, 4, 2, 42, True)  # one process at batch 4
    for r in range(2):
        mine = [order[i] for i in DistributedSampler(range(len(order)), num_replicas=2, rank=r, shuffle=False)]
        for k in range(len(want) // 4):  # micro-step k: process r's batch of 2
            assert mine[2 * k:2 * k + 2] == want[4 * k + 2 * r:4 * k + 2 * r + 2]
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(RuntimeError, match="made for 2 processes"):
        components._order(24, 4, 2, 2, 42, True, 0, processes=2)


@pytest.mark.parametrize("backend, overrides, field, can", [
    ("unsloth", ["train.devices=2"], "train.devices", "trl"),  # one process: names the backends that can
    ("torchtune", ["peft=lora", "train.devices=2"], "peft.type=lora", "backend=trl"),  # LoRA recipes need NCCL
    ("torchtune", ["train.devices=2", "train.save_steps=2"], "train.save_steps", None),
    ("torchtune", ["train.devices=2", "train.strategy=deepspeed"], "train.strategy", None),
    ("trl", ["train.strategy=deepspeed"], "train.strategy", None),
])
def test_what_a_backend_cannot_launch_is_refused(tmp_path, backend, overrides, field, can):
    run_dir, p = run(tmp_path, "refused", f"backend={backend}", *overrides)
    assert p.returncode == 2 and not run_dir.exists(), p.stderr[-2000:]
    assert field in p.stderr
    if can:
        assert can in p.stderr, "the backends that can are named"
