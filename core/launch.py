"""Several processes: the job's world size and the arguments of PyTorch's launcher (torchrun), for the backends
whose engines start through it (TRL's worker under ``python -m torch.distributed.run``; torchtune's ``tune run``,
which takes torchrun's options before the recipe). Imports no engine."""
from __future__ import annotations

from typing import Any


def world_size(job: Any) -> int:
    """Processes that train together: ``train.devices`` × ``train.nodes``."""
    return int(job.train.get("devices", 1)) * int(job.train.get("nodes", 1))


def torchrun_args(job: Any, joined: bool = True) -> list[str]:
    """torchrun's options for the job's processes; none for one process. Every rank's output is kept under
    ``logs/ranks/`` and echoed, prefixed, into the step's log. One node runs ``--standalone``; several meet at a
    c10d rendezvous whose endpoint and node rank the scheduler gives through torchrun's own variables
    (``PET_RDZV_ENDPOINT``, ``PET_NODE_RANK``; docs/distributed.md).

    :param joined: ``--nproc-per-node=2`` as torchrun spells it; False: ``--nproc_per_node 2``, as ``tune run``'s
        documentation does.
    """
    t = job.train
    if world_size(job) == 1:
        return []
    pairs = [("--nproc-per-node" if joined else "--nproc_per_node", t.devices), ("--nnodes", t.nodes),
             ("--log-dir", "logs/ranks"), ("--redirects", 3), ("--tee", 3)]
    if t.nodes > 1:
        pairs.append(("--rdzv-backend", "c10d"))
    argv = [f"{k}={v}" for k, v in pairs] if joined else [str(x) for pair in pairs for x in pair]
    return argv + (["--standalone"] if t.nodes == 1 else [])
