"""An Axolotl YAML as an anytune job (``python -m core.migrate --from axolotl FILE``): the inverse of
``translate.py``, key by key."""
from __future__ import annotations

from typing import Any, Callable

from core import migrate as api

DATA_HINT, EMPTY, MAPPED, NONE = api.DATA_HINT, api.EMPTY, api.MAPPED, api.NONE
Migration, empty, flatten = api.Migration, api.empty, api.flatten

AXOLOTL_OWNED = {
    "datasets": DATA_HINT, "test_datasets": "anytune's held-out data: data.eval=FILE or data.eval_fraction",
    "dataset_prepared_path": "anytune writes the data pre-tokenised into plan/ itself",
    "output_dir": "the run directory (run_dir=DIR); artefacts go to its artifacts/",
    "special_tokens": "anytune tokenises with the model's own tokenizer; added tokens would make Axolotl's "
                      "tokenizer differ from the data's (use a tokenizer that has them)",
    "tokens": "as special_tokens", "chat_template_jinja": "data.chat_template=PATH.jinja",
    "eval_sample_packing": "anytune evaluates unpacked (set by the plan)",
    "hub_model_id": "push the artefacts yourself (artifacts/ holds them)", "hub_strategy": "as hub_model_id",
    "resume_from_checkpoint": "python -m core resume=RUN_DIR", "plugins": "anytune ships its own Axolotl plugin",
    "evals_per_epoch": "train.eval_steps=N (optimiser steps between evaluations)",
    "saves_per_epoch": "train.save_steps=N (optimiser steps between checkpoints)",
    "save_strategy": "train.save_steps", "eval_strategy": "train.eval_steps", "dataset_processes": "set by the plan",
    "shuffle_merged_datasets": "train.shuffle", "curriculum_sampling": "train.shuffle=false",
}
"""Axolotl keys anytune's plan sets for its own reasons (data, output, tracking ...): not passed through."""
WANDB = "a tracker: ANYTUNE_TRACKERS=mlflow,trackio (docs/tracking.md)"


def from_axolotl(cfg: dict[str, Any], source: str = "") -> Migration:
    """An Axolotl YAML (``axolotl train cfg.yml``) as an anytune job on ``backend=axolotl``."""
    from plugins.axolotl import translate as ax  # the mapping is the inverse of the translation's tables

    mig = Migration("axolotl", source, groups={"backend": "axolotl"})
    cfg = dict(cfg)
    adapter = cfg.get("adapter")
    dora = bool(cfg.get("peft_use_dora"))
    peft = {"lora": "dora" if dora else "lora", "qlora": "qlora"}.get(adapter or "", "none")
    mig.groups["peft"] = peft  # conf/peft/<type>.yaml
    rl = cfg.get("rl")
    if rl:
        method = {v: k for k, v in ax.RL.items()}.get(rl) or ("kto" if rl == "kto" else None)
        if method:
            mig.groups["method"] = method
    simple: dict[str, tuple[str, Callable[[Any], Any]]] = {
        "base_model": ("model.name_or_path", str), "sequence_len": ("train.max_length", int),
        "micro_batch_size": ("train.batch_size", int), "gradient_accumulation_steps": ("train.grad_accum", int),
        "num_epochs": ("train.epochs", float), "max_steps": ("train.max_steps", int),
        "learning_rate": ("train.learning_rate", float), "weight_decay": ("train.weight_decay", float),
        "max_grad_norm": ("train.max_grad_norm", float),
        "gradient_checkpointing": ("train.gradient_checkpointing", bool),
        "seed": ("train.seed", int), "logging_steps": ("train.logging_steps", int),
        "save_steps": ("train.save_steps", int), "eval_steps": ("train.eval_steps", int),
        "trust_remote_code": ("model.trust_remote_code", bool),
        "lora_r": ("peft.r", int), "lora_alpha": ("peft.alpha", int), "lora_dropout": ("peft.dropout", float),
    }
    for key, value in cfg.items():
        if key in ("tokenizer_config", "base_model_config") and value == cfg.get("base_model"):
            mig.add(key, value, MAPPED, "model.name_or_path", "the model's own tokenizer, as anytune uses")
        elif key.startswith("wandb_") or key.startswith("mlflow_") or key.startswith("comet_"):
            mig.add(key, value, EMPTY if empty(value) else NONE, "", WANDB)
        elif empty(value) and key not in ("datasets",):
            mig.add(key, value, EMPTY, "", "no value: nothing to carry")
        elif key in simple:
            canonical, conv = simple[key]
            if key in ("lora_r", "lora_alpha", "lora_dropout") and peft == "none":
                mig.add(key, value, NONE, "", "no adapter in this config: has no effect")
            else:
                mig.set(key, value, canonical, conv(value))
        elif key in ("adapter", "peft_use_dora"):
            mig.set(key, value, "peft.type", peft)
        elif key == "load_in_4bit" and value and peft == "qlora":
            mig.set(key, value, "peft.type", "qlora")
        elif key == "lora_target_modules" and peft != "none":
            mig.set(key, value, "peft.target_modules", list(value))
        elif key == "lora_target_linear" and peft != "none":
            if value:
                mig.set(key, value, "peft.target_modules", ["all-linear"])
            else:
                mig.add(key, value, MAPPED, "peft.target_modules", "false: the modules listed are the targets")
        elif key == "lr_scheduler" and value in ax.SCHEDULERS.values():
            mig.set(key, value, "train.lr_scheduler", {v: k for k, v in ax.SCHEDULERS.items()}[value])
        elif key == "optimizer" and value in ax.OPTIMIZERS.values():
            mig.set(key, value, "train.optimizer", {v: k for k, v in ax.OPTIMIZERS.items()}[value])
        elif key == "warmup_ratio":
            mig.set(key, value, "train.warmup_ratio", float(value), "planned as warmup_steps = ceil(ratio x steps), "
                    "as transformers rounds it", same_key=False)
        elif key == "sample_packing":
            mig.set(key, value, "method.packing", bool(value), "anytune packs the rows itself, as TRL does (one pack "
                    "a row); the plan keeps Axolotl's sample_packing off" if value else "", same_key=not value)
        elif key == "val_set_size":
            mig.set(key, value, "data.eval_fraction", float(value), "anytune splits the held-out rows itself; "
                    "the plan names them in test_datasets with val_set_size 0", same_key=False)
        elif key == "bf16":
            precision = {True: "bf16", "auto": "auto"}.get(value, "fp32")
            mig.set(key, value, "train.precision", precision,
                    "auto: bf16 where the GPU has it, as anytune's auto; the plan writes the resolved true/false"
                    if value == "auto" else "", same_key=value != "auto")
        elif key == "fp16" and not value:
            mig.add(key, value, MAPPED, "train.precision", "false: the plan writes fp16 false")
        elif key == "tf32" and not value:
            mig.add(key, value, MAPPED, "(fixed)", "anytune's plan always writes tf32 false")
        elif key == "rl" and "method" in mig.groups:
            mig.set(key, value, "method.name", mig.groups["method"])
        elif key in ("rl_beta", "dpo_beta"):
            mig.set(key, value, "method.beta", float(value), same_key=key == "rl_beta")
        elif key == "dpo_loss_type" and all(v in ax.DPO_LOSSES.values() for v in list(value)) and len(value) == 1:
            mig.set(key, value, "method.loss_type", {v: k for k, v in ax.DPO_LOSSES.items()}[list(value)[0]])
        elif key == "chat_template" and value in ("chatml", "llama3", "zephyr"):
            mig.set(key, value, "data.chat_template", value, "anytune renders its built-in template of record; "
                    "the plan names it as a file (chat_template: jinja)", same_key=False)
        elif key == "chat_template" and value == "tokenizer_default":
            mig.add(key, value, MAPPED, "data.chat_template=null", "the tokenizer's own template (the default)",
                    same_key=False)
        elif key in AXOLOTL_OWNED:
            mig.add(key, value, NONE, "", AXOLOTL_OWNED[key])
        else:
            mig.pass_native(key, value)
    if peft == "none":
        mig.fields["peft.type"] = "none"
    if "datasets" in cfg:
        names = [str(d.get("path")) if isinstance(d, dict) else str(d) for d in cfg["datasets"] or []]
        mig.fields["data.train"] = api.data_placeholder(names)
    return mig
