"""Several processes through the engine's own launcher (torchrun; ``tune run --nproc_per_node`` for torchtune):
a real two-process run on CPU over gloo trains the single-process curve at the same effective batch, only rank 0
writes, every rank's log is kept; the plan of a two-node job leaves the rendezvous to the scheduler; what a
backend cannot launch is refused, naming the backends that can."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import runproto

CORE = [sys.executable, "-m", "core", "offline=true"]
JOB = ["peft=none", "train.max_steps=4", "train.learning_rate=1e-3", "data.max_rows=24", "train.shuffle=true"]
"""A full fine-tune (every weight's gradient is averaged across ranks), shuffled: the order is anytune's."""
AXOLOTL = ["backend=axolotl", "data.eval_fraction=0"]


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


@pytest.mark.parametrize("backend", [[], AXOLOTL])
def test_two_nodes_leave_the_rendezvous_to_the_scheduler(tmp_path, backend):
    run_dir, p = run(tmp_path, "nodes", *backend, "train.devices=2", "train.nodes=2", "plan_only=true")
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


@pytest.mark.slow
def test_axolotl_two_processes_equal_one_process_at_the_same_effective_batch(tmp_path):
    """Axolotl under torchrun (``torchrun -m axolotl.cli.train``, what ``axolotl train --launcher torchrun`` runs),
    DDP over gloo: the shipped plugin puts the ranks on the CPU, keeps the Trainer's multi-process CPU state and
    averages the loss over every rank's tokens (the held-out loss too, whose last batch is uneven); each rank reads
    its batch of each micro-step of the job's order. The plan's YAML run by hand with ``axolotl train --launcher
    torchrun`` (its header) trains the same curve."""
    held_out = ["data.eval_fraction=0.25", "train.eval_steps=2"]  # 6 rows: the last batch is uneven
    one, p1 = run(tmp_path, "one", *AXOLOTL, *held_out, "train.batch_size=4")
    two, p2 = run(tmp_path, "two", *AXOLOTL, *held_out, "train.batch_size=2", "train.devices=2")
    assert p1.returncode == 0 and p2.returncode == 0, (p1.stderr[-2000:], p2.stderr[-2000:])
    command = json.loads((two / "plan" / "command.json").read_text())["command"]
    assert command[command.index("torch.distributed.run") + 1:][:1] == ["--nproc-per-node=2"]
    assert command[-3:] == ["-m", "axolotl.cli.train", "plan/axolotl.yaml"]
    assert "--launcher torchrun -- --nproc-per-node=2" in (two / "plan" / "axolotl.yaml").read_text()
    rows = runproto.read_jsonl(str(two / runproto.METRICS_FILE))
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4], "one row per step: rank 0 alone writes"
    want = [r["loss"] for r in runproto.read_jsonl(str(one / runproto.METRICS_FILE)) if "loss" in r]
    got = [r["loss"] for r in rows if "loss" in r]
    assert got == pytest.approx(want, abs=1e-5, rel=0), (got, want)
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    want_evals = [(r["step"], r["eval_loss"]) for r in runproto.read_jsonl(str(one / runproto.METRICS_FILE))
                  if "eval_loss" in r]
    assert [s for s, _ in evals] == [s for s, _ in want_evals] and len(evals) >= 3, (evals, want_evals)
    assert [v for _, v in evals] == pytest.approx([v for _, v in want_evals], abs=1e-5, rel=0), (evals, want_evals)
    ranks = sorted(p.parent.name for p in (two / "logs" / "ranks").glob("*/attempt_0/*/stderr.log"))
    assert ranks == ["0", "1"], "both ranks ran and their logs are kept"
    result = runproto.read_json(str(two / runproto.RESULT))
    assert result["status"] == "succeeded" and (two / result["artifacts"]["model"]["path"] / "config.json").exists()
    assert not (two / runproto.CHECKPOINTS).exists(), "rank 0 moved what Axolotl saved into artifacts/"
    from core import compare

    assert compare.Job.load(two).effective_batch() == compare.Job.load(one).effective_batch() == 4
    # the YAML's header: Axolotl's own launcher runs the ejected plan to the same curve, without anytune
    ejected, p3 = run(tmp_path, "ejected", *AXOLOTL, *held_out, "train.batch_size=2", "train.devices=2",
                      "plan_only=true")
    assert p3.returncode == 0, p3.stderr[-2000:]
    line = next(x for x in (ejected / "plan" / "axolotl.yaml").read_text().splitlines() if " axolotl train " in x)
    argv = line.split("PYTHONPATH=. ", 1)[1].split()
    assert argv[:5] == ["axolotl", "train", "plan/axolotl.yaml", "--launcher", "torchrun"], line
    bin_dir = str(Path(command[0]).parent)  # the Axolotl environment's interpreter
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "PYTHONPATH": ".",
           "AXOLOTL_DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    p4 = subprocess.run(argv, cwd=ejected, env=env, capture_output=True, text=True, timeout=900)
    assert p4.returncode == 0, p4.stderr[-3000:]
    alone = [r["loss"] for r in runproto.read_jsonl(str(ejected / runproto.METRICS_FILE)) if "loss" in r]
    assert alone == pytest.approx(got, abs=1e-6, rel=0), (alone, got)


@pytest.mark.parametrize("backend, overrides, field, can", [
    ("unsloth", ["train.devices=2"], "train.devices", "trl"),  # one process: names the backends that can
    ("torchtune", ["peft=lora", "train.devices=2"], "peft.type=lora", "backend=trl"),  # LoRA recipes need NCCL
    ("torchtune", ["train.devices=2", "train.save_steps=2"], "train.save_steps", None),
    ("torchtune", ["train.devices=2", "train.strategy=deepspeed"], "train.strategy", None),
    ("trl", ["train.strategy=deepspeed"], "train.strategy", None),
    ("axolotl", ["train.devices=2", "train.strategy=fsdp"], "train.strategy", "torchtune"),
])
def test_what_a_backend_cannot_launch_is_refused(tmp_path, backend, overrides, field, can):
    run_dir, p = run(tmp_path, "refused", f"backend={backend}", *overrides)
    assert p.returncode == 2 and not run_dir.exists(), p.stderr[-2000:]
    assert field in p.stderr
    if can:
        assert can in p.stderr, "the backends that can are named"


def test_slurm_preset_asks_for_a_task_per_node_and_the_gpus_of_each():
    """hydra/launcher=slurm: nodes = train.nodes, gpus_per_node = train.devices, one task per node (the engine's
    launcher inside it), as Hydra's submitit launcher receives them; hydra/launcher=submitit: one task per node."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra.utils import instantiate

    from core import config

    cfg = config.compose(["hydra/launcher=slurm", "train.nodes=2", "train.devices=4"], hydra=True)
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    assert {k: launcher.params[k] for k in ("nodes", "gpus_per_node", "tasks_per_node")} == \
        {"nodes": 2, "gpus_per_node": 4, "tasks_per_node": 1}
    local = instantiate(config.compose(["hydra/launcher=submitit", "train.nodes=2"], hydra=True).hydra.launcher)
    assert type(local).__name__ == "LocalLauncher" and local.params["tasks_per_node"] == 2


def test_one_task_per_node(monkeypatch):
    from core import tasks
    from core.config import compose
    from core.errors import ConfigError

    task = tasks.Task(rank=1, count=2, host="node-a", job_id="4242")
    tasks.check(compose(["train.nodes=2"]), task)
    with pytest.raises(ConfigError, match="one task per node"):
        tasks.check(compose(["train.nodes=1"]), task)
    monkeypatch.setenv("PET_RDZV_ENDPOINT", "")  # recorded, so that the value rendezvous() sets is undone
    monkeypatch.delenv("PET_RDZV_ENDPOINT")
    monkeypatch.setenv("PET_RDZV_ID", "mine")  # what the environment sets wins
    assert tasks.rendezvous(task) == {"PET_RDZV_ENDPOINT": "node-a:24242", "PET_RDZV_ID": "mine"}


@pytest.mark.slow
@pytest.mark.parametrize("backend", [[], AXOLOTL], ids=["trl", "axolotl"])
def test_submitit_local_executor_runs_a_two_node_job_as_two_tasks(tmp_path, backend):
    """hydra/launcher=submitit with train.nodes=2: a job of two tasks (submitit's local executor), task 0 runs the
    job, task 1 starts the plan's launcher too; the two torchrun agents meet at the c10d rendezvous as two
    nodes of one process each, and train the one-process curve at the same effective batch."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    one, p1 = run(tmp_path, "one", *backend, "train.batch_size=4")
    assert p1.returncode == 0, p1.stderr[-2000:]
    p = subprocess.run([*CORE, "-m", "hydra/launcher=submitit", *JOB, *backend, "train.batch_size=2", "train.nodes=2"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600)
    tails = "\n".join(f"== {f.relative_to(tmp_path)}\n{f.read_text(errors='replace')[-1500:]}"
                      for f in sorted(tmp_path.glob("runs/*/*-sweep/**/*.err")) +
                      sorted(tmp_path.glob("runs/*/*-sweep/*/logs/train*.stderr.log")))
    assert p.returncode == 0, p.stderr[-3000:] + tails
    sweep = next((tmp_path / "runs").glob("*/*-sweep"))
    logs = sorted(f.name for f in (sweep / ".submitit").glob("*/*_log.out"))
    assert [name.split("_")[1] for name in logs] == ["0", "1"], f"two tasks of one job: {logs}"
    job = next(sweep.glob("0-*-sft"))
    command = json.loads((job / "plan" / "command.json").read_text())["command"]
    assert "--nnodes=2" in command and "--rdzv-backend=c10d" in command
    assert (job / "logs" / "train.node1.stderr.log").exists(), "task 1 ran the plan's launcher"
    agents = list((job / "logs" / "ranks").glob("*/attempt_0/0/stderr.log"))
    assert len(agents) == 2, "one launcher per node, one process each"
    rows = runproto.read_jsonl(str(job / runproto.METRICS_FILE))
    got = [r["loss"] for r in rows if "loss" in r]
    want = [r["loss"] for r in runproto.read_jsonl(str(one / runproto.METRICS_FILE)) if "loss" in r]
    assert got == pytest.approx(want, abs=1e-4, rel=0), (got, want)
    assert runproto.read_json(str(job / runproto.RESULT))["status"] == "succeeded"
