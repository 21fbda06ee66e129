"""Translation of the canonical job into TRL's native arguments (``plan/trl_args.json``): plain dicts,
no engine import."""
from __future__ import annotations

from typing import Any, Callable

from omegaconf import OmegaConf

from plugins import hftrainer


def trainer_args(job: Any, has_eval: bool, order: dict[str, Any] | None = None) -> dict[str, Any]:
    """TRL ``*Config`` keyword arguments: TrainingArguments' plus the method's own, then ``backend.native``.

    :param order: the job's example order (``hftrainer.schedule``).
    """
    t, m = job.train, job.method
    args = hftrainer.training_args(job, has_eval, order)
    args["max_length"] = t.max_length
    # Every key below is explicit, never left to a TRL default that might differ from what the job means
    # (TRL 1.16's *Config defaults gradient_checkpointing=True, bf16=None->True, disable_dropout=True ...).
    if m.name == "sft":
        args.update(packing=m.packing, completion_only_loss=m.completion_only_loss,
                    dataset_num_proc=job.backend.get("dataset_num_proc", 1),
                    loss_type="nll",  # the SFT objective: token cross-entropy
                    assistant_only_loss=False,  # the loss mask is completion_mask (the data comes tokenised)
                    padding_free=False,  # packing implies it in TRL; unpacked rows are padded
                    truncation_mode="keep_start",  # train.max_length cuts the end, as every engine does
                    shuffle_dataset=False,  # order is the sampler's (train.shuffle); never shuffled before
                    include_num_input_tokens_seen="non_padding")
    elif m.name == "dpo":
        args.update(beta=m.beta, loss_type=[m.loss_type], label_smoothing=0.0,
                    disable_dropout=False,  # TRL's default zeroes every dropout, peft.dropout included
                    truncation_mode="keep_start", precompute_ref_log_probs=False)
    elif m.name == "orpo":
        args.update(beta=m.beta, disable_dropout=False)  # TRL's default zeroes every dropout, peft.dropout too
    elif m.name == "kto":
        args.update(beta=m.beta, loss_type="kto", desirable_weight=1.0, undesirable_weight=1.0,
                    disable_dropout=False,  # TRL's default zeroes every dropout, peft.dropout included
                    precompute_ref_log_probs=False,
                    train_sampling_strategy="sequential")  # its KL term pairs neighbouring rows (check() refuses shuffle)
    args.update(OmegaConf.to_container(job.backend.native, resolve=True) if job.backend.get("native") else {})
    return args


def native_spec(job: Any, data: Any, rel: Callable[[Any], str] = str, resume: str | None = None) -> dict[str, Any]:
    """The whole job in TRL's terms: model loading, peft.LoraConfig kwargs, *Config kwargs, data paths, the
    order of the examples, the checkpoint to resume from.

    :param data: the prepared data (``core.DataInfo``: kind, row counts, train/eval/template paths).
    :param rel: turns a path into the form the plan names it by (relative to the run directory).
    :param resume: checkpoint folder to continue from (``Context.resume``).
    """
    p = job.peft
    order = hftrainer.schedule(job, int(data.stats["rows"]["train"]))
    return {
        "method": job.method.name,
        "kind": data.kind,
        "model": {"name_or_path": job.model.name_or_path, "dtype": hftrainer.load_dtype(job),
                  "trust_remote_code": job.model.trust_remote_code, "load_in_4bit": p.type == "qlora",
                  "attn_implementation": hftrainer.attention(job)},
        "peft": hftrainer.lora_kwargs(p),
        "data": {"train": rel(data.train), "eval": rel(data.eval) if data.eval else None,
                 "chat_template": rel(data.template) if data.template else None},
        "args": trainer_args(job, data.eval is not None, order),
        "order": order,
        "resume": resume,
        "offline": bool(job.offline),
        "save": bool(job.train.save_artifacts),
    }
