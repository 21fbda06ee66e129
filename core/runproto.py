"""The run protocol between the core and a step's process. Standard library only.

This module is the whole contract a worker has to meet, and it is copied into
``plan/`` beside every worker (``ctx.ship(runproto)``), so an ejected plan runs
where anytune is not installed. The core imports it too: one definition of the
run-directory names, the metrics schema, atomic writes and the outcome file.

A worker:

- appends rows to ``metrics.jsonl`` with :class:`MetricsWriter` (optional);
- may record what it produced in the outcome file with :class:`Outcome`
  (final metrics, artefacts, trainable parameters, versions);
- exits 0 on success, 130 when interrupted, anything else on failure.

The core alone writes ``result.json``: the status comes from the exit code, the
rest from the outcome file.
"""
from __future__ import annotations

import json
import math
import os
import platform
import random
import resource
import sys
import tempfile
import time
from typing import Any

# -- run-directory names (relative to the run directory, the worker's working directory) -------------

CONFIG = "config.yaml"
"""The resolved job, secrets redacted."""
DATA = "data"
"""Normalised data folder."""
TRAIN = "data/train.jsonl"
"""Normalised training records."""
EVAL = "data/eval.jsonl"
"""Normalised held-out records (absent when there are none)."""
TEMPLATE = "data/chat_template.jinja"
"""The chat template of record (absent for kinds or steps that use none)."""
STATS = "data/stats.json"
"""Statistics of the prepared data."""
PLAN = "plan"
"""Native files of every step, and their commands."""
METRICS_FILE = "metrics.jsonl"
"""One row per logged step (schema: :data:`METRICS`)."""
RESULT = "result.json"
"""The job's result; written by the core alone."""
EVAL_FILE = "eval.json"
"""Scores of every evaluator that ran."""
ARTIFACTS = "artifacts"
"""What the steps produced: adapter, model, merged model, ..."""
LOGS = "logs"
"""Each step's own stdout and stderr."""
OUTCOME = "outcome.json"
"""Default outcome file; the core names another in ``$ANYTUNE_OUTCOME``."""
OUTCOME_ENV = "ANYTUNE_OUTCOME"
"""Environment variable holding the outcome file a step's worker writes."""

INTERRUPTED = 130
"""Exit code of a worker stopped by Ctrl-C (SIGINT)."""

#: The one metrics schema for all engines: one JSON object per line of metrics.jsonl.
METRICS = {
    "step": "optimiser step (1-based)",
    "max_steps": "total optimiser steps planned",
    "epoch": "fractional epoch",
    "loss": "training loss: mean over loss tokens of the step's batches",
    "learning_rate": "learning rate at this step",
    "grad_norm": "gradient norm before clipping",
    "tokens": "tokens processed so far (non-padding)",
    "tokens_per_s": "tokens processed per second since the previous row",
    "peak_memory_mb": "peak accelerator memory (CUDA) or peak process RSS (CPU), MiB",
    "eval_loss": "loss on the eval set (rows written at evaluation)",
    "token_accuracy": "fraction of the step's loss tokens predicted right (hosted APIs report it)",
    "eval_token_accuracy": "fraction of the eval set's loss tokens predicted right (hosted APIs report it)",
    "elapsed_s": "seconds since training started",
}


#: The one schema of ``result.json``'s ``final`` for every engine. The core computes ``steps``, ``tokens``,
#: ``first_loss`` and ``last_loss`` from ``metrics.jsonl``; ``train_loss`` and ``eval_loss`` are the engine's own.
FINAL = {
    "steps": "optimiser steps run (the last logged step)",
    "tokens": "tokens processed (non-padding), as last logged",
    "first_loss": "training loss of the first logged step",
    "last_loss": "training loss of the last logged step",
    "train_loss": "the engine's mean training loss over the run",
    "eval_loss": "the engine's loss on the eval set at the end (when it evaluates during training)",
}


# -- files ---------------------------------------------------------------------------------------------


def atomic_write_text(path: str, text: str) -> None:
    """Write text so readers see the old file or the new one, never half of one."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str, obj: Any) -> None:
    """Write JSON atomically (see ``atomic_write_text``)."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str))


def read_json(path: str) -> Any:
    """The JSON value in ``path``."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


SECRET_PREFIX = "ANYTUNE_SECRET_"
"""Secrets reach a step's process only as environment variables named with this prefix."""


def resolve_env(value: Any) -> Any:
    """``value`` with every ``${oc.env:NAME}`` string replaced by that environment variable: the form in which
    a plan names a secret (an API key, a hub token) it never holds. Works through dicts and lists.

    :raises KeyError: a named variable is not set (run the plan with it exported).
    """
    if isinstance(value, dict):
        return {k: resolve_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_env(v) for v in value]
    if isinstance(value, str) and value.startswith("${oc.env:") and value.endswith("}"):
        name = value[len("${oc.env:"):-1]
        if name not in os.environ:
            raise KeyError(f"the plan names the secret ${name}; export it before running the plan")
        return os.environ[name]
    return value


def read_jsonl(path: str) -> list[dict]:
    """Every JSON object of a JSON-lines file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# -- measurements ---------------------------------------------------------------------------------------


_peak_seen = 0.0
"""The largest peak :func:`peak_memory_mb` has read in this process."""


def peak_memory_mb() -> float:
    """Peak CUDA memory if torch has CUDA in use, else the process's peak RSS; never below a peak read before in
    this process, so an engine that resets CUDA's peak counter (Axolotl does at every log) does not hide it from a
    caller that read it in time (``hfglue``'s callback reads it at each step's end)."""
    global _peak_seen
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        value = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        value = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    _peak_seen = max(_peak_seen, value)
    return _peak_seen


def versions(*dists: str) -> dict[str, str]:
    """Installed versions of the named distributions (missing ones omitted), and Python's."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for d in dists:
        try:
            out[d] = version(d)
        except PackageNotFoundError:
            pass
    return out


def hardware() -> dict[str, Any]:
    """CPU/GPU description of this machine."""
    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                            "machine": platform.machine()}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


# -- the schedule: which examples each optimiser step trains on, the same on every engine ----------------

CHECKPOINTS = "artifacts/checkpoints"
"""Resumable checkpoints, one folder per step: ``checkpoint-<step>/`` (the engine's own layout inside)."""
CHECKPOINT_DONE = ".anytune-complete"
"""Written last into a checkpoint folder: a folder without it is an interrupted save, never resumed from."""


def steps_and_passes(rows: int, batch: int, accum: int, max_steps: int, epochs: float) -> tuple[int, int]:
    """(optimiser steps, passes over the data) of a job on ``rows`` examples.

    Steps: ``max_steps``, else ``ceil(epochs * ceil(ceil(rows / batch) / accum))`` as Hugging Face counts
    them. Passes: how many passes over the data those steps' full batches reach into.
    """
    if max_steps > 0:
        steps = max_steps
    else:
        steps = max(1, math.ceil(epochs * math.ceil(math.ceil(rows / batch) / accum)))
    return steps, max(1, math.ceil(steps * batch * accum / max(rows, 1)))


def example_order(rows: int, steps: int, batch: int, accum: int, seed: int, shuffle: bool) -> list[int]:
    """Indices of the examples that ``steps`` optimiser steps of ``accum`` micro-batches of ``batch`` train on.

    Pass ``p`` over the data is a permutation seeded with ``seed + p`` (file order when not ``shuffle``);
    passes are concatenated and cut at ``steps * batch * accum``, so every batch is full and an epoch
    boundary may fall inside a batch (the next pass's first examples complete it). Every engine trains on
    this order, so engines see the same batches, shuffled or not.
    """
    need = steps * batch * accum
    order: list[int] = []
    p = 0
    while len(order) < need:
        idx = list(range(rows))
        if shuffle:
            random.Random(seed + p).shuffle(idx)
        order += idx
        p += 1
    return order[:need]


def last_checkpoint(run_dir: str = ".") -> tuple[int, str] | None:
    """(step, path relative to ``run_dir``) of the newest complete checkpoint, or None."""
    base = os.path.join(run_dir, CHECKPOINTS)
    found = []
    for name in os.listdir(base) if os.path.isdir(base) else ():
        head, _, step = name.rpartition("-")
        if head == "checkpoint" and step.isdigit() and os.path.exists(os.path.join(base, name, CHECKPOINT_DONE)):
            found.append((int(step), f"{CHECKPOINTS}/{name}"))
    return max(found) if found else None


def mark_complete(path: str) -> None:
    """Mark a checkpoint folder as completely written (call after its last file)."""
    with open(os.path.join(path, CHECKPOINT_DONE), "w") as f:
        f.write("")


def rank() -> int:
    """This process's global rank under a distributed launcher (``$RANK``, set by torchrun); 0 alone.
    Only rank 0 writes metrics, the outcome and artefacts; every rank's own log is kept by the launcher."""
    return int(os.environ.get("RANK", "0") or 0)


def processes() -> int:
    """The processes training together under a distributed launcher (``$WORLD_SIZE``, set by torchrun in each
    rank); 1 alone."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


class MetricsWriter:
    """Appends schema rows to metrics.jsonl, adding elapsed time, tokens/s and peak memory (rank 0 only)."""

    def __init__(self, path: str = METRICS_FILE):
        """:param path: the metrics file (relative to the run directory)."""
        self.path = path
        self.start = time.time()
        self._last_t = self.start
        self._last_tokens = 0
        open(path, "a").close()

    def restart(self) -> None:
        """Start the clock now (call when training, not loading, begins)."""
        self.start = self._last_t = time.time()

    def write(self, **row: Any) -> dict:
        """Append one row; keys outside :data:`METRICS` and None values are dropped. Returns the row."""
        now = time.time()
        row = {k: v for k, v in row.items() if k in METRICS and v is not None}
        tokens = row.get("tokens")
        if tokens is not None and "tokens_per_s" not in row and now > self._last_t:
            row["tokens_per_s"] = round((tokens - self._last_tokens) / (now - self._last_t), 1)
            self._last_tokens, self._last_t = tokens, now
        row.setdefault("peak_memory_mb", peak_memory_mb())
        row["elapsed_s"] = round(now - self.start, 3)
        if rank() != 0:
            return row
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        return row


# -- the outcome file -------------------------------------------------------------------------------------


def local_artifact(path: str, **meta: Any) -> dict[str, Any]:
    """An artefact on disk, ``path`` relative to the run directory (``artifacts/adapter``)."""
    return {"path": path, **meta}


def remote_artifact(id: str, provider: str, **meta: Any) -> dict[str, Any]:
    """An artefact held by a service: a hosted model id (``ft:gpt-4.1-mini:org::abc``) and who holds it."""
    return {"id": id, "provider": provider, **meta}


def outcome_path() -> str:
    """Where this step's outcome goes: ``$ANYTUNE_OUTCOME``, else ``outcome.json`` in the working directory."""
    return os.environ.get(OUTCOME_ENV) or OUTCOME


class Outcome:
    """Records what a worker produced in the outcome file, whatever happens.

    ``with Outcome(("trl", "torch")) as out:`` yields a dict to fill: ``final``
    (metrics such as ``train_loss``, ``eval_loss``), ``artifacts`` (name ->
    :func:`local_artifact` / :func:`remote_artifact`), ``trainable_parameters``,
    ``train_seconds``, ``scores`` (evaluators) ... On exit it adds versions,
    hardware, peak memory and worker time (and the error of a failure), writes the
    file atomically and sets ``code`` to the exit code the worker should return
    (0, 130 interrupted, 1 failed). Exceptions are recorded and printed, not raised.
    """

    def __init__(self, dists: tuple[str, ...] = (), path: str | None = None):
        """:param dists: distributions whose versions are recorded."""
        self.path, self.code, self.started = path or outcome_path(), 1, time.time()
        self.data: dict[str, Any] = {"versions": versions(*dists)}

    def __enter__(self) -> dict[str, Any]:
        return self.data

    def __exit__(self, typ, exc, tb) -> bool:
        import traceback

        d = self.data
        if typ is None:
            self.code = 0
        elif issubclass(typ, KeyboardInterrupt):
            self.code = INTERRUPTED
        else:
            d["error"] = f"{typ.__name__}: {exc}"
            d["traceback"] = "".join(traceback.format_exception(typ, exc, tb))[-4000:]
            traceback.print_exception(typ, exc, tb)
        d.setdefault("hardware", hardware())
        d.setdefault("peak_memory_mb", peak_memory_mb())
        d["worker_seconds"] = round(time.time() - self.started, 3)
        if rank() == 0:
            atomic_write_json(self.path, d)
        return True
