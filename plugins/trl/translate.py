"""Translation of the canonical job into TRL's native arguments (``plan/trl_args.json``): plain dicts,
no engine import."""
from __future__ import annotations

from typing import Any, Callable

from omegaconf import OmegaConf

from plugins import hftrainer


def trainer_args(job: Any, has_eval: bool) -> dict[str, Any]:
    """TRL ``*Config`` keyword arguments: TrainingArguments' plus the method's own, then ``backend.native``."""
    t, m = job.train, job.method
    args = hftrainer.training_args(job, has_eval)
    args["max_length"] = t.max_length
    if m.name == "sft":
        args.update(packing=m.packing, completion_only_loss=m.completion_only_loss,
                    dataset_num_proc=job.backend.get("dataset_num_proc", 1))
    elif m.name == "dpo":
        args.update(beta=m.beta, loss_type=[m.loss_type])
    elif m.name == "orpo":
        args.update(beta=m.beta)
    args.update(OmegaConf.to_container(job.backend.native, resolve=True) if job.backend.get("native") else {})
    return args


def native_spec(job: Any, data: Any, rel: Callable[[Any], str] = str) -> dict[str, Any]:
    """The whole job in TRL's terms: model loading, peft.LoraConfig kwargs, *Config kwargs, data paths.

    :param data: the prepared data (``core.DataInfo``: kind, train/eval/template paths).
    :param rel: turns a path into the form the plan names it by (relative to the run directory).
    """
    p = job.peft
    return {
        "method": job.method.name,
        "kind": data.kind,
        "model": {"name_or_path": job.model.name_or_path, "dtype": hftrainer.load_dtype(job),
                  "trust_remote_code": job.model.trust_remote_code, "load_in_4bit": p.type == "qlora"},
        "peft": hftrainer.lora_kwargs(p),
        "data": {"train": rel(data.train), "eval": rel(data.eval) if data.eval else None,
                 "chat_template": rel(data.template) if data.template else None},
        "args": trainer_args(job, data.eval is not None),
        "offline": bool(job.offline),
        "save": bool(job.train.save_artifacts),
    }
