"""Shared by backends built on Hugging Face's ``Trainer`` (TRL, Unsloth, the contrib template).

Translation here is plain dicts: nothing imports transformers. A backend adds its own
keys (TRL's ``packing``, ``beta`` ...) on top and applies ``backend.native`` last.
Worker-side glue (metrics callback, tokenising with the loss masks, training, saving)
is ``glue.py``, shipped into the plan as ``hfglue.py`` by :func:`ship`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import core

GLUE = Path(__file__).parent / "glue.py"
"""The worker-side glue module (runs in the engine's process; imports ``runproto`` and ``lossmask``)."""
VARLEN = Path(__file__).parent / "varlen.py"
"""Attention over packed rows one sequence at a time (``plan/hfvarlen.py``)."""


def ship(ctx: Any) -> list[str]:
    """Copy ``runproto.py``, ``lossmask.py``, ``hfglue.py`` and ``hfvarlen.py`` into the plan directory; their
    relative paths."""
    from core import lossmask, runproto

    return ctx.ship(runproto, lossmask, GLUE, VARLEN, rename={"glue.py": "hfglue.py", "varlen.py": "hfvarlen.py"})


def attention(job: Any) -> str:
    """``attn_implementation`` to load the model with: with packing, attention within each packed sequence
    (``hfvarlen``: flash varlen on CUDA, per-sequence SDPA elsewhere) instead of SDPA over a block-diagonal
    mask the size of the whole flattened batch; otherwise transformers' SDPA. Same values either way."""
    return "anytune_varlen" if job.method.get("packing") else "sdpa"

SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant",
              "constant_with_warmup": "constant_with_warmup"}
"""canonical train.lr_scheduler -> transformers' lr_scheduler_type"""
OPTIMIZERS = {"adamw": "adamw_torch", "sgd": "sgd"}
"""canonical train.optimizer -> transformers' optim"""
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""canonical train.precision -> torch dtype name"""


def schedule(job: Any, rows: int) -> dict[str, Any] | None:
    """The order the worker puts the training examples in (``runproto.example_order``'s arguments), so the
    Trainer reads them sequentially, batch by batch, as every engine does; None when packing (the engine
    packs, then its sampler orders the packs).

    :param rows: training records.
    """
    from core import runproto

    t = job.train
    if job.method.get("packing"):
        return None
    batch = t.batch_size * core.world_size(job)  # one micro-step reads a batch per process, in turn
    steps, _ = runproto.steps_and_passes(rows, batch, t.grad_accum, t.max_steps, t.epochs)
    return {"steps": steps, "batch": batch, "accum": t.grad_accum, "seed": t.seed, "shuffle": bool(t.shuffle)}


def command(job: Any, python: str, script: list[str]) -> list[str]:
    """argv that runs a worker ``script`` (its path and arguments): itself for one process; for several,
    PyTorch's own launcher (``torchrun``: ``python -m torch.distributed.run``, :func:`core.torchrun_args`), which
    the Trainer (accelerate) picks up from its environment: DDP over NCCL on GPUs, gloo on CPU."""
    if core.world_size(job) == 1:
        return [python, *script]
    return [python, "-m", "torch.distributed.run", *core.torchrun_args(job), *script]


def training_args(job: Any, has_eval: bool, order: dict[str, Any] | None = None) -> dict[str, Any]:
    """``TrainingArguments`` keyword arguments for the canonical ``train`` section.

    :param has_eval: the prepared data has an eval split.
    :param order: the job's :func:`schedule`: the Trainer runs its steps over the examples in that order.
    """
    from core import runproto

    t = job.train
    args: dict[str, Any] = {
        "output_dir": runproto.CHECKPOINTS,
        "per_device_train_batch_size": t.batch_size,
        "per_device_eval_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": SCHEDULERS[t.lr_scheduler],
        "warmup_steps": t.warmup_ratio,  # transformers reads a value below 1 as a ratio of the steps
        "weight_decay": t.weight_decay,
        "optim": OPTIMIZERS[t.optimizer],
        "max_grad_norm": t.max_grad_norm,
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps,
        "seed": t.seed,
        "data_seed": t.seed,
        "logging_steps": t.logging_steps,
        "logging_first_step": True,
        "save_strategy": "steps" if t.save_steps > 0 else "no",
        "report_to": "none",
        "disable_tqdm": True,
        "bf16": t.precision == "bf16",
        "fp16": t.precision == "fp16",
        "use_cpu": t.device == "cpu",
        "dataloader_num_workers": 0,
    }
    # Always explicit, never left to an engine default: TRL's *Config defaults gradient_checkpointing=True,
    # so writing it only when true would train with checkpointing on while config.yaml says off.
    args["activation_checkpointing"] = bool(t.gradient_checkpointing)
    args["train_sampling_strategy"] = "random" if t.shuffle else "sequential"
    if order:  # the examples come in the schedule's order: one pass of them, read in order
        args.update(max_steps=order["steps"], train_sampling_strategy="sequential")
    if t.save_steps > 0:
        args["save_steps"] = t.save_steps
    if has_eval and t.eval_steps > 0:
        args.update(eval_strategy="steps", eval_steps=t.eval_steps)
    else:  # no evaluation during training (the worker evaluates once at the end when there is eval data)
        args["eval_strategy"] = "no"
    return args


def lora_kwargs(peft: Any) -> dict[str, Any] | None:
    """``peft.LoraConfig`` keyword arguments, or None for a full fine-tune."""
    if peft.type == "none":
        return None
    targets = list(peft.target_modules)
    return {"r": peft.r, "lora_alpha": peft.alpha, "lora_dropout": peft.dropout,
            "target_modules": targets[0] if targets == ["all-linear"] else targets,
            "use_dora": peft.type == "dora", "task_type": "CAUSAL_LM", "bias": "none"}


def load_dtype(job: Any) -> str:
    """Dtype to load the base weights in: model.dtype, or for auto the training precision
    (a full fine-tune keeps fp32 master weights and computes in mixed precision)."""
    if job.model.dtype != "auto":
        return job.model.dtype
    return "float32" if job.peft.type == "none" else DTYPES[job.train.precision]
