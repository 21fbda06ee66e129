"""Translation of the canonical job into the worker's native arguments (``plan/hf_args.json``):
plain dicts, no engine import, no file written.

``plan/hf_args.json`` is plain ``transformers.TrainingArguments`` kwargs plus
``peft.LoraConfig`` kwargs and model/data paths: readable and editable, and run by
``plan/hf_worker.py`` without anytune installed (``sh plan/run.sh``).
"""
from __future__ import annotations

from typing import Any, Callable

from omegaconf import OmegaConf

from plugins import hftrainer


def training_args(job: Any, has_eval: bool, order: dict[str, Any] | None = None) -> dict[str, Any]:
    """``TrainingArguments`` keyword arguments: the shared translation, this worker's own, then ``backend.native``.

    :param order: the job's example order (``hftrainer.schedule``).
    """
    args = hftrainer.training_args(job, has_eval, order)
    args.update(remove_unused_columns=False, include_num_input_tokens_seen="non_padding")
    args.update(OmegaConf.to_container(job.backend.native, resolve=True) if job.backend.get("native") else {})
    return args


def native_spec(job: Any, data: Any, rel: Callable[[Any], str] = str, resume: str | None = None) -> dict[str, Any]:
    """The whole job in transformers/peft terms: model loading, LoraConfig kwargs, TrainingArguments kwargs,
    the order of the examples, the checkpoint to resume from.

    :param job: the resolved canonical config.
    :param data: the prepared data (``core.DataInfo``: kind, row counts, train/eval/template paths).
    :param rel: turns a path into the form the plan names it by (relative to the run directory).
    :param resume: checkpoint folder to continue from (``Context.resume``).
    """
    t, m, b = job.train, job.method, job.backend
    order = hftrainer.schedule(job, int(data.stats["rows"]["train"]))
    return {
        "kind": data.kind,
        "model": {"name_or_path": job.model.name_or_path, "dtype": hftrainer.load_dtype(job),
                  "trust_remote_code": job.model.trust_remote_code,
                  "attn_implementation": b.get("attn_implementation") or None},
        "peft": hftrainer.lora_kwargs(job.peft),
        "data": {"train": rel(data.train), "eval": rel(data.eval) if data.eval else None,
                 "chat_template": rel(data.template) if data.template else None},
        "tokenize": {"max_length": t.max_length, "completion_only_loss": m.completion_only_loss,
                     "pad_to_multiple_of": b.get("pad_to_multiple_of") or None},
        "args": training_args(job, data.eval is not None, order),
        "order": order,
        "resume": resume,
        "offline": bool(job.offline),
        "save": bool(t.save_artifacts),
    }
