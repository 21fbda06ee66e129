"""Translation of the canonical job into the Unsloth worker's arguments (``plan/unsloth_args.json``): plain
dicts, no engine import.

The TRL side (``*Config`` keywords) is TRL's translation (:func:`plugins.trl.translate.trainer_args`):
Unsloth trains with TRL's trainers, patched, so every canonical field means the same there. What differs
is the model: ``FastLanguageModel.from_pretrained`` (4-bit, full fine-tuning, Unsloth's own gradient
checkpointing) and ``FastLanguageModel.get_peft_model`` instead of peft's ``LoraConfig`` in the trainer.
"""
from __future__ import annotations

from typing import Any, Callable

from core import ConfigError
from plugins import hftrainer
from plugins.trl.translate import trainer_args

LORA_TARGETS = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"})
"""Module names ``FastLanguageModel.get_peft_model`` accepts (its ``accepted_modules``); or ``all-linear``."""
QUIET = {"UNSLOTH_DISABLE_STATISTICS": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "UNSLOTH_LLAMA_CPP_OFFLINE": "1",
         "UNSLOTH_PREWARM_HUB_CACHE": "0", "TOKENIZERS_PARALLELISM": "false",
         "UNSLOTH_COMPILE_LOCATION": "logs/unsloth_compiled_cache"}
"""Environment of every Unsloth process: no statistics call to the hub, no llama.cpp download, no hub cache
pre-warming (anytune never calls Unsloth's savers that would), the compiled-kernel cache inside the run
directory (Unsloth's default writes ``unsloth_compiled_cache/`` into the working directory)."""
DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def check(job: Any) -> None:
    """What the capability table cannot say: LoRA targets Unsloth patches, and the weights' dtype.

    :raises ConfigError: a target module ``get_peft_model`` would reject, or a ``model.dtype`` other than the
        training precision's (Unsloth computes in the dtype it loads).
    """
    p = job.peft
    if p.type != "none":
        targets = list(p.target_modules)
        bad = [t for t in targets if t not in LORA_TARGETS] if targets != ["all-linear"] else []
        if bad:
            raise ConfigError(f"peft.target_modules={targets}: Unsloth adapts only {sorted(LORA_TARGETS)} "
                              f"(or [all-linear]); {bad} it would refuse")
    dtype = job.model.dtype
    if dtype != "auto" and job.train.precision in DTYPES and dtype != DTYPES[job.train.precision]:
        raise ConfigError(f"model.dtype={dtype} with train.precision={job.train.precision}: Unsloth loads the "
                          f"weights in the dtype it computes in; use model.dtype=auto or "
                          f"{DTYPES[job.train.precision]}")


def load_dtype(job: Any) -> str:
    """Dtype ``from_pretrained`` loads the weights in: the training precision's (also for a full fine-tune:
    Unsloth's ``full_finetuning`` trains the loaded weights in that dtype)."""
    return job.model.dtype if job.model.dtype != "auto" else DTYPES.get(job.train.precision, "bfloat16")


def lora_kwargs(job: Any) -> dict[str, Any] | None:
    """``FastLanguageModel.get_peft_model`` keyword arguments (after the model), or None for a full fine-tune."""
    base = hftrainer.lora_kwargs(job.peft)
    if base is None:
        return None
    return {"r": base["r"], "lora_alpha": base["lora_alpha"], "lora_dropout": base["lora_dropout"],
            "target_modules": base["target_modules"], "bias": "none", "use_dora": base["use_dora"],
            "use_rslora": False, "init_lora_weights": True, "random_state": job.train.seed,
            "use_gradient_checkpointing": checkpointing(job)}


def checkpointing(job: Any) -> str | bool:
    """Unsloth's ``use_gradient_checkpointing``: its own offloading ``"unsloth"`` mode when
    ``train.gradient_checkpointing`` is on, else False (its default is ``"unsloth"``, never left to it)."""
    return "unsloth" if job.train.gradient_checkpointing else False


def model_kwargs(job: Any) -> dict[str, Any]:
    """``FastLanguageModel.from_pretrained`` keyword arguments but ``dtype`` (a torch dtype: named in the spec's
    ``model.dtype``). Every one explicit: ``load_in_4bit`` defaults to True there, gradient checkpointing to
    ``"unsloth"``."""
    return {"model_name": job.model.name_or_path, "max_seq_length": job.train.max_length,
            "load_in_4bit": job.peft.type == "qlora", "load_in_8bit": False, "load_in_16bit": False,
            "full_finetuning": job.peft.type == "none", "trust_remote_code": False,
            "use_gradient_checkpointing": checkpointing(job), "random_state": job.train.seed,
            # the tokenizer of record is anytune's (hfglue.load_tokenizer), which the worker trains with
            "fix_tokenizer": False}


def native_spec(job: Any, data: Any, rel: Callable[[Any], str] = str) -> dict[str, Any]:
    """The whole job in Unsloth's terms: ``from_pretrained`` and ``get_peft_model`` kwargs, the TRL *Config
    kwargs, data paths.

    :param data: the prepared data (``core.DataInfo``: kind, train/eval/template paths).
    :param rel: turns a path into the form the plan names it by (relative to the run directory).
    """
    args = trainer_args(job, data.eval is not None)
    native = job.backend.get("native") or {}
    if "activation_checkpointing" not in native and "gradient_checkpointing" not in native:
        # Unsloth checkpoints itself (use_gradient_checkpointing above); the Trainer's own would wrap it twice
        args["activation_checkpointing"] = False
    return {
        "method": job.method.name,
        "kind": data.kind,
        "model": {**model_kwargs(job), "dtype": load_dtype(job)},
        "peft": lora_kwargs(job),
        "data": {"train": rel(data.train), "eval": rel(data.eval) if data.eval else None,
                 "chat_template": rel(data.template) if data.template else None},
        "args": args,
        "offline": bool(job.offline),
        "save": bool(job.train.save_artifacts),
    }
