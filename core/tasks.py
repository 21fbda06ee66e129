"""One job over several scheduler tasks: one task per node (Hydra's submitit launcher, Slurm or its local
executor), the engine's own launcher (torchrun, ``tune run``) inside each.

The conf/hydra/launcher presets start ``train.nodes`` tasks of one job (``slurm``: ``nodes = train.nodes``,
``tasks_per_node = 1``, ``gpus_per_node = train.devices``; ``submitit``: ``tasks_per_node = train.nodes`` on this
machine). Every task runs the job's Hydra task function. Task 0 runs the job as always (claims the run
directory, prepares the data, plans, starts its node's launcher, writes ``result.json``); every other task waits
for the trainer's plan in the same run directory (storage every node sees) and starts the same command on its own
node. The launchers meet at a c10d rendezvous on the first task's host (``PET_RDZV_ENDPOINT``, unless the
environment sets it), which also numbers the nodes. Imports no engine.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError

RDZV_PORT_BASE = 20000
"""The rendezvous port is ``RDZV_PORT_BASE + job id % 20000`` unless ``PET_RDZV_ENDPOINT`` names one: two jobs on
one host do not meet at the same port."""


@dataclass(frozen=True)
class Task:
    """This process's place in a scheduler job of several tasks."""

    rank: int
    """Global task rank (0 runs the job)."""
    count: int
    """Tasks in the job."""
    host: str
    """Host of task 0 (the rendezvous)."""
    job_id: str
    """The scheduler's job id."""


def current() -> Task | None:
    """The submitit task this process is, when its job has several tasks; None otherwise."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks <= 1:
        return None
    hosts = env.hostnames if env.cluster != "local" else ["127.0.0.1"]
    return Task(rank=env.global_rank, count=env.num_tasks, host=hosts[0], job_id=str(env.job_id))


def check(cfg: Any, task: Task) -> None:
    """One task per node: the job's tasks must be its ``train.nodes``.

    :raises ConfigError: another number of tasks (each would start a node's launcher).
    """
    nodes = int(cfg.train.get("nodes", 1))
    if task.count != nodes:
        raise ConfigError(f"this job has {task.count} scheduler tasks and train.nodes={nodes}: anytune runs one task "
                          "per node, the engine's launcher inside it (hydra/launcher=slurm sets nodes=train.nodes, "
                          "tasks_per_node=1; hydra/launcher=submitit sets tasks_per_node=train.nodes)")


def rendezvous(task: Task) -> dict[str, str]:
    """torchrun's rendezvous variables for the job's launchers (those the environment already sets win); they are
    also put into this process's environment, which the step's launcher inherits."""
    digits = "".join(c for c in task.job_id if c.isdigit()) or "0"
    env = {"PET_RDZV_ENDPOINT": f"{task.host}:{RDZV_PORT_BASE + int(digits) % 20000}",
           "PET_RDZV_ID": f"anytune-{task.job_id}"}
    for key, value in env.items():
        os.environ.setdefault(key, value)
    return {k: os.environ[k] for k in env}


def follow(cfg: Any, run_dir: Path, task: Task, timeout: float | None = None) -> dict[str, Any]:
    """A task other than 0: wait for the trainer's plan in ``run_dir``, then run its command on this node (its
    output in ``logs/train.node<rank>.stdout.log`` / ``.stderr.log``). Returns this task's record (task 0's
    ``result.json`` is the job's)."""
    from core import runner, runproto

    run_dir = Path(run_dir).expanduser().resolve()
    command_file = run_dir / runproto.PLAN / "command.json"
    deadline = time.time() + (timeout if timeout is not None else 60 * float(os.environ.get(
        "ANYTUNE_TASK_WAIT_MIN", "60")))
    while not command_file.exists():
        if (run_dir / runproto.RESULT).exists():  # task 0 ended before planning (a refused job)
            return {"status": "skipped", "task": task.rank, "reason": "the job ended before its plan was written"}
        if time.time() > deadline:
            return {"status": "failed", "task": task.rank, "error": f"no plan appeared in {run_dir}"}
        time.sleep(0.5)
    plan = runproto.read_json(str(command_file))
    logs = run_dir / runproto.LOGS
    logs.mkdir(exist_ok=True)
    stem = logs / f"train.node{task.rank}"
    env = {**runner.child_env(cfg, plan.get("env") or {}), "ANYTUNE_TASK": str(task.rank),
           runproto.OUTCOME_ENV: str(stem) + ".outcome.json"}  # rank 0 alone writes an outcome; never this one
    with open(f"{stem}.stdout.log", "w") as out, open(f"{stem}.stderr.log", "w") as err:
        code = subprocess.call(plan["command"], cwd=run_dir, stdout=out, stderr=err, env=env)
    return {"status": "succeeded" if code == 0 else "failed", "task": task.rank, "host": socket.gethostname(),
            "exit_code": code}
