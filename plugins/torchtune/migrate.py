"""A torchtune recipe config as an anytune job (``python -m core.migrate --from torchtune FILE``): the
inverse of ``translate.py``, key by key."""
from __future__ import annotations

from typing import Any

from core import migrate as api

DATA_HINT, EMPTY, MAPPED, NONE = api.DATA_HINT, api.EMPTY, api.MAPPED, api.NONE
Migration, empty, flatten = api.Migration, api.empty, api.flatten

TORCHTUNE_OWNED = {
    "output_dir": "the run directory (run_dir=DIR); artefacts go to its artifacts/",
    "tokenizer._component_": "anytune's tokenizer component: the model's own tokenizer.json and the template of record",
    "tokenizer.path": "the model directory's tokenizer (model.name_or_path)",
    "tokenizer.prompt_template": "data.chat_template=NAME|PATH.jinja",
    "checkpointer": "set by the plan from model.name_or_path (torchtune's HF checkpointer over its safetensors)",
    "resume_from_checkpoint": "python -m core resume=RUN_DIR",
    "dataset": DATA_HINT, "dataset_val": "data.eval (torchtune 0.6.1's single-device recipes cannot evaluate)",
    "metric_logger": "anytune's metric logger writes metrics.jsonl; for W&B and others a tracker (docs/tracking.md)",
    "save_adapter_weights_only": "anytune saves the adapter alone into artifacts/adapter",
    "max_steps_per_epoch": "train.max_steps (with epochs 1)",
    "lr_scheduler.num_warmup_steps": "train.warmup_ratio=R (a fraction of the job's steps, not a count)",
    "batch_size_val": "no validation loop", "run_val_every_n_steps": "no validation loop",
    "optimizer._component_": "anytune's AdamW or SGD component (train.optimizer)",
}
"""torchtune keys anytune's plan sets itself: not passed through (they would replace its components)."""
LOSSES = {"torchtune.modules.loss.CEWithChunkedOutputLoss": ("sft", None),
          "torchtune.rlhf.loss.DPOLoss": ("dpo", "sigmoid"), "torchtune.rlhf.loss.RSOLoss": ("dpo", "hinge")}
SCHEDULES = {"get_cosine_schedule_with_warmup": "cosine", "get_linear_schedule_with_warmup": "linear",
             "get_constant_schedule": "constant", "get_constant_schedule_with_warmup": "constant_with_warmup"}
OPTIMS = {"torch.optim.AdamW": "adamw", "torch.optim.SGD": "sgd"}
DIRECT = {"model.lora_rank": ("peft.r", int), "model.lora_alpha": ("peft.alpha", int),
          "model.lora_dropout": ("peft.dropout", float), "batch_size": ("train.batch_size", int),
          "gradient_accumulation_steps": ("train.grad_accum", int), "optimizer.lr": ("train.learning_rate", float),
          "optimizer.weight_decay": ("train.weight_decay", float), "compile": ("backend.compile", bool),
          "device": ("train.device", str), "dtype": ("train.precision", str),
          "enable_activation_checkpointing": ("train.gradient_checkpointing", bool),
          "log_every_n_steps": ("train.logging_steps", int)}
"""torchtune keys that are one anytune field each, and the type it takes."""


def from_torchtune(cfg: dict[str, Any], source: str = "") -> Migration:
    """A torchtune recipe config (``tune run RECIPE --config cfg.yaml``) as an anytune job on ``backend=torchtune``."""
    from plugins.torchtune import translate as tt

    mig = Migration("torchtune", source, groups={"backend": "torchtune"})
    model = dict(cfg.get("model") or {})
    builder = str(model.get("_component_", ""))
    leaf = builder.rsplit(".", 1)[-1]
    peft = ("qlora" if leaf.startswith("qlora_") or model.get("quantize_base") else
            "dora" if model.get("use_dora") else "lora" if leaf.startswith("lora_") else "none")
    mig.groups["peft"] = peft  # conf/peft/<type>.yaml
    loss = str((cfg.get("loss") or {}).get("_component_", ""))
    method, loss_type = LOSSES.get(loss, ("sft", None))
    if method != "sft":
        mig.groups["method"] = method
    checkpoint_dir = (cfg.get("checkpointer") or {}).get("checkpoint_dir")
    if checkpoint_dir:
        mig.fields["model.name_or_path"] = str(checkpoint_dir).rstrip("/")
    done: set[str] = set()

    def handle(key: str, value: Any) -> None:
        if key in DIRECT:
            field, kind = DIRECT[key]
            mig.set(key, value, field, kind(value))
        elif key == "model._component_":
            mig.add(key, value, MAPPED, f"peft.type={peft}, model.name_or_path",
                    "the builder follows from the model's config.json (its size from its dimensions)", same_key=False)
        elif key in ("model.lora_attn_modules", "model.apply_lora_to_mlp", "model.apply_lora_to_output"):
            if "targets" not in done:
                done.add("targets")
                attn = {v: k for k, v in tt.ATTN.items()}
                targets = [attn[m] for m in model.get("lora_attn_modules") or [] if m in attn]
                targets += list(tt.MLP) if model.get("apply_lora_to_mlp") else []
                targets += ["lm_head"] if model.get("apply_lora_to_output") else []
                mig.fields["peft.target_modules"] = targets
            mig.add(key, value, MAPPED, f"peft.target_modules={mig.fields['peft.target_modules']}")
        elif key in ("model.use_dora", "model.quantize_base"):
            mig.add(key, value, MAPPED, f"peft.type={peft}")
        elif key == "checkpointer.checkpoint_dir":
            mig.add(key, value, MAPPED, f"model.name_or_path={mig.fields['model.name_or_path']}",
                    "torchtune reads a local model directory: download the model there (tune download / hf download)")
        elif key == "tokenizer.max_seq_len":
            if value is None:
                mig.add(key, value, NONE, "", "unbounded in torchtune; anytune cuts at train.max_length (default 512)")
            else:
                mig.set(key, value, "train.max_length", int(value))
        elif key == "dataset.packed":
            mig.set(key, value, "method.packing", bool(value), "the plan writes packed: true only when packing",
                    same_key=bool(value))
        elif key == "seed":
            if value is None:
                mig.add(key, value, NONE, "", "a random seed in torchtune; anytune always seeds (train.seed, 42)")
            else:
                mig.set(key, value, "train.seed", int(value))
        elif key == "shuffle":
            mig.set(key, value, "train.shuffle", bool(value), "the plan's dataset shuffles (dataset.shuffle); the "
                    "recipe's sampler does not", same_key=False)
        elif key == "max_steps_per_epoch" and value is not None:
            epochs = float(cfg.get("epochs") or 1)
            mig.set(key, value, "train.max_steps", int(value * epochs), "" if epochs == 1 else
                    "the plan's max_steps_per_epoch is the whole job's steps (one recipe epoch)", same_key=epochs == 1)
        elif key == "max_steps_per_epoch":
            mig.add(key, value, EMPTY, "", "null: the epochs decide (train.epochs)")
        elif key == "epochs":
            mig.set(key, value, "train.epochs", float(value), "the plan runs one recipe epoch over the data's passes",
                    same_key=False)
        elif key == "optimizer._component_" and value in OPTIMS:
            mig.set(key, value, "train.optimizer", OPTIMS[value], "anytune's component of the same optimiser",
                    same_key=False)
        elif key == "lr_scheduler._component_" and value.rsplit(".", 1)[-1] in SCHEDULES:
            mig.set(key, value, "train.lr_scheduler", SCHEDULES[value.rsplit(".", 1)[-1]],
                    "anytune's schedule component (lr_scheduler.name)", same_key=False)
        elif key == "loss._component_" and loss in LOSSES:
            if method == "sft":
                mig.add(key, value, MAPPED, "method.name=sft")
            else:
                mig.set(key, value, "method.loss_type", loss_type)
                mig.fields["method.name"] = method
        elif key in ("loss.beta", "loss.gamma") and method == "dpo":
            mig.set(key, value, "method.beta", float(value))
        elif key == "clip_grad_norm":
            mig.set(key, value, "train.max_grad_norm", 0.0 if value is None else float(value),
                    "" if method == "sft" else "the DPO recipe does not clip: the plan's optimiser does",
                    same_key=method == "sft")
        elif any(key == k or key.startswith(k + ".") for k in TORCHTUNE_OWNED):
            owner = next(k for k in TORCHTUNE_OWNED if key == k or key.startswith(k + "."))
            mig.add(key, value, NONE, "", TORCHTUNE_OWNED[owner])
        elif key.startswith("optimizer.") and (cfg.get("optimizer") or {}).get("_component_") not in OPTIMS:
            mig.add(key, value, NONE, "", "an argument of an optimiser anytune does not run")
        elif key.startswith("lr_scheduler.") and key != "lr_scheduler.num_warmup_steps":
            mig.add(key, value, NONE, "", "a schedule anytune does not have (linear, cosine, constant, "
                    "constant_with_warmup)")
        elif key.startswith("loss."):
            mig.add(key, value, NONE, "", "a loss anytune's torchtune plan does not use")
        else:
            mig.pass_native(key, value)

    for key, value in flatten(cfg).items():
        if key in ("model.vocab_size", "model.num_layers", "model.embed_dim") or (
                key.startswith("model.") and key.split(".", 1)[1] in ("num_heads", "num_kv_heads", "intermediate_dim",
                                                                     "max_seq_len", "norm_eps", "rope_base")):
            mig.add(key, value, MAPPED, "model.name_or_path", "from the model's config.json", same_key=False)
        else:
            handle(key, value)
    mig.fields["peft.type"] = peft
    if "dataset" in cfg:
        ds = cfg["dataset"]
        mig.fields["data.train"] = api.data_placeholder([str(d.get("_component_") if isinstance(d, dict) else d)
                                                         for d in (ds if isinstance(ds, list) else [ds])])
    return mig
