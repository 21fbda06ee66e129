"""Translation of the canonical job into the worker's native arguments (``plan/hf_args.json``).

``plan/hf_args.json`` is plain ``transformers.TrainingArguments`` kwargs plus
``peft.LoraConfig`` kwargs and model/data paths: readable and editable, and run by
``plan/hf_worker.py`` without anytune installed (``sh plan/run.sh``).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

import core
from core import workerlib

HERE = Path(__file__).parent

#: canonical scheduler name -> transformers' ``lr_scheduler_type``
SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant",
              "constant_with_warmup": "constant_with_warmup"}
#: canonical optimiser name -> transformers' ``optim``
OPTIMIZERS = {"adamw": "adamw_torch", "sgd": "sgd"}
#: canonical precision -> torch dtype name the weights load in (``model.dtype=auto``)
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def plan(backend: core.Backend, run_dir: Path) -> core.Plan:
    """Write ``plan/hf_args.json``, copy the worker and ``workerlib`` beside it, return the command."""
    plan_dir = run_dir / "plan"
    plan_dir.mkdir(parents=True, exist_ok=True)
    stats = workerlib.read_json(str(run_dir / "data" / "stats.json"))
    spec = native_spec(backend.job, stats)
    (plan_dir / "hf_args.json").write_text(json.dumps(spec, indent=2))
    shutil.copy(HERE / "worker.py", plan_dir / "hf_worker.py")
    shutil.copy(workerlib.__file__, plan_dir / "workerlib.py")
    return core.Plan(command=[backend.python(), "plan/hf_worker.py", "plan/hf_args.json"],
                     files=["plan/hf_args.json", "plan/hf_worker.py", "plan/workerlib.py"])


def native_spec(job: Any, stats: dict[str, Any]) -> dict[str, Any]:
    """The whole job in transformers/peft terms: model loading, LoraConfig kwargs, TrainingArguments kwargs.

    :param job: the resolved canonical config.
    :param stats: ``data/stats.json`` of the prepared data (its kind and row counts).
    """
    t, m, p, b = job.train, job.method, job.peft, job.backend
    has_eval = bool(stats.get("rows", {}).get("eval"))
    args: dict[str, Any] = {
        "output_dir": "artifacts/checkpoints",
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
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "bf16": t.precision == "bf16",
        "fp16": t.precision == "fp16",
        "use_cpu": t.device == "cpu",
        "dataloader_num_workers": 0,
        "remove_unused_columns": False,
        "include_num_input_tokens_seen": "non_padding",
    }
    if t.gradient_checkpointing:
        args["activation_checkpointing"] = True
    if not t.shuffle:
        args["train_sampling_strategy"] = "sequential"
    if has_eval and t.eval_steps > 0:
        args.update(eval_strategy="steps", eval_steps=t.eval_steps)
    args.update(OmegaConf.to_container(b.native, resolve=True) if b.native else {})
    peft = None
    if p.type != "none":
        targets = list(p.target_modules)
        peft = {"r": p.r, "lora_alpha": p.alpha, "lora_dropout": p.dropout,
                "target_modules": targets[0] if targets == ["all-linear"] else targets,
                "use_dora": p.type == "dora", "task_type": "CAUSAL_LM", "bias": "none"}
    dtype = job.model.dtype
    if dtype == "auto":
        # full fine-tune keeps fp32 master weights and computes in mixed precision
        dtype = "float32" if p.type == "none" else DTYPES[t.precision]
    return {
        "kind": stats["kind"],
        "model": {"name_or_path": job.model.name_or_path, "dtype": dtype,
                  "trust_remote_code": job.model.trust_remote_code,
                  "attn_implementation": b.get("attn_implementation") or None},
        "peft": peft,
        "data": {"train": "data/train.jsonl",
                 "eval": "data/eval.jsonl" if has_eval else None,
                 "chat_template": "data/chat_template.jinja"},
        "tokenize": {"max_length": t.max_length, "completion_only_loss": m.completion_only_loss,
                     "pad_to_multiple_of": b.get("pad_to_multiple_of") or None},
        "args": args,
        "offline": bool(job.offline),
        "save": bool(t.save_artifacts),
    }
