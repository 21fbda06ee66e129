"""How the conformance suite reads each first-party engine's own effective configuration (test side).

``TrlFields`` and ``TorchtuneFields`` give :class:`core.conformance.fields.FieldsReachEngine` its
``FIELD_MAP`` (canonical field -> where the engine holds it, written here by hand, never taken from
the translation) and ``effective_configs`` (built from a plan as the engine builds it). The suite mixes
them into the backend's conformance class; ``tests/test_conformance.py`` runs them.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig

from core.conformance.fields import (TRAINER_FIELD_MAP, Expect, FieldsReachEngine, agree, at, dtype_of,
                                     load_plan_module, steps_of, targets_of, template_of, warmup_steps_of)

HERE = Path(__file__).resolve().parent


def count_rows(path: Path) -> int:
    """Records of a JSONL file."""
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


# -- TRL --------------------------------------------------------------------------------------------------

TRL_METHODS = {"SFTConfig": "sft", "DPOConfig": "dpo", "ORPOConfig": "orpo",
               "SFTTrainer": "sft", "DPOTrainer": "dpo", "ORPOTrainer": "orpo"}
"""TRL's config and trainer classes -> canonical method.name."""


def _trl_method(e: Mapping[str, Any], job: DictConfig) -> Any:
    a = e["args"]
    by_config, by_trainer = TRL_METHODS.get(type(a).__name__), TRL_METHODS.get(e["trainer_class"].__name__)
    if by_config != by_trainer:
        return ("config", type(a).__name__, "trainer", e["trainer_class"].__name__)
    if by_config == "sft" and a.loss_type != "nll":  # SFT is token cross-entropy (TRL also has "dft")
        return ("sft with loss_type", a.loss_type)
    return by_config


def _trl_completion_only(e: Mapping[str, Any], job: DictConfig) -> Any:
    a = e["args"]
    if a.assistant_only_loss:  # the mask is the tokenised completion_mask; TRL's own would replace it
        return ("assistant_only_loss",)
    return agree(at("args.completion_only_loss"), at("completion_only"))(e, job)


def _trl_packing(e: Mapping[str, Any], job: DictConfig) -> Any:
    a = e["args"]
    if getattr(a, "padding_free", False) and not a.packing:  # rows flattened into one: packing by another name
        return ("padding_free without packing",)
    return a.packing


def _trl_loss_type(e: Mapping[str, Any], job: DictConfig) -> Any:
    a = e["args"]
    kinds = list(a.loss_type) if isinstance(a.loss_type, (list, tuple)) else [a.loss_type]
    if getattr(a, "label_smoothing", 0.0):  # conservative DPO: another objective than the named one
        return ("label_smoothing", a.label_smoothing)
    return kinds[0] if len(kinds) == 1 else kinds


def _trl_max_length(e: Mapping[str, Any], job: DictConfig) -> Any:
    a = e["args"]
    if getattr(a, "truncation_mode", "keep_start") != "keep_start":  # every engine cuts the end
        return ("truncation_mode", a.truncation_mode)
    return agree(at("args.max_length"), at("max_length"))(e, job)


class TrlFields(FieldsReachEngine):
    """TRL: the method's ``SFTConfig``/``DPOConfig``/``ORPOConfig`` as the plan's worker builds it (after
    ``__post_init__``), peft's ``LoraConfig``, the model's loading kwargs and the tokenizer."""

    FIELD_MAP = {
        **TRAINER_FIELD_MAP,
        "method.name": _trl_method,
        "method.completion_only_loss": _trl_completion_only,
        "method.packing": _trl_packing,
        "method.beta": at("args.beta"),
        "method.loss_type": _trl_loss_type,
        "train.max_length": _trl_max_length,
    }

    def effective_config(self, run_dir: Path) -> Mapping[str, Any]:
        """``settings()`` of the plan's own worker (``plan/trl_worker.py``), run in the run directory."""
        worker = load_plan_module(run_dir / "plan" / "trl_worker.py", f"trl_worker_{run_dir.name}")
        spec = json.loads((run_dir / "plan" / "trl_args.json").read_text())
        with contextlib.chdir(run_dir):
            settings = worker.settings(spec)
        return {**settings, "rows": count_rows(run_dir / "data" / "train.jsonl")}


# -- torchtune --------------------------------------------------------------------------------------------

TT_MODULES = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "output_proj": "o_proj",
              "w1": "gate_proj", "w2": "down_proj", "w3": "up_proj", "output": "lm_head"}
"""torchtune's Llama module names -> Hugging Face's (torchtune's convert_weights: w1 gate, w2 down, w3 up)."""
TT_RECIPES = {"LoRAFinetuneRecipeSingleDevice": "sft", "FullFinetuneRecipeSingleDevice": "sft",
              "LoRADPORecipeSingleDevice": "dpo"}
"""torchtune's recipe classes -> canonical method.name."""
TT_LOSSES = {"DPOLoss": "sigmoid", "RSOLoss": "hinge"}
"""torchtune's preference losses -> canonical method.loss_type (RSO is the hinge loss of DPO)."""
TT_PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _one(values: list) -> Any:
    """The value every adapter module holds, or all of them when they differ."""
    distinct = sorted(set(values))
    return distinct[0] if len(distinct) == 1 else ("differ", *distinct)


def _adapters(e: Mapping[str, Any], key: str) -> Any:
    return _one([a[key] for a in e["model"]["adapters"]])


def _tt_peft_type(e: Mapping[str, Any], job: DictConfig) -> str:
    adapters = e["model"]["adapters"]
    if not adapters:
        return "none"
    if any(a["quantized"] for a in adapters):
        return "qlora" if not any(a["dora"] for a in adapters) else "qdora"
    return "dora" if all(a["dora"] for a in adapters) else "lora" if not any(a["dora"] for a in adapters) else "mixed"


def _tt_name_or_path(e: Mapping[str, Any], job: DictConfig) -> tuple:
    return (str(Path(e["checkpoint_dir"]).resolve()), str(Path(e["tokenizer"]["args"]["path"]).resolve()),
            e["model"]["embed_dim"], e["model"]["num_layers"])


def _model_dims(job: DictConfig, e: Mapping[str, Any]) -> tuple:
    path = Path(job.model.name_or_path).resolve()
    config = json.loads((path / "config.json").read_text())
    return (str(path), str(path), config["hidden_size"], config["num_hidden_layers"])


def _tt_beta(e: Mapping[str, Any], job: DictConfig) -> Any:
    loss = e["loss"]
    return loss["beta"] if loss["class"] == "DPOLoss" else loss.get("gamma")


def _tt_loss_type(e: Mapping[str, Any], job: DictConfig) -> Any:
    loss = e["loss"]
    if loss.get("label_smoothing"):
        return ("label_smoothing", loss["label_smoothing"])
    return TT_LOSSES.get(loss["class"], loss["class"])


def _tt_max_grad_norm(e: Mapping[str, Any], job: DictConfig) -> Any:
    recipe, optimiser = e["clip_grad_norm"], e["optimizer"]["max_grad_norm"]
    if recipe is not None and optimiser is not None:
        return ("clipped twice", recipe, optimiser)
    value = recipe if recipe is not None else optimiser
    return 0.0 if value is None else float(value)  # canonical 0 = no clipping


def _sequential(order: list[int] | None) -> bool:
    return order is not None and all(b == a + 1 or b == 0 for a, b in zip(order, order[1:]))


def _tt_shuffle(e: Mapping[str, Any], job: DictConfig) -> bool:
    return e["sampler_shuffle"] or not _sequential(e["dataset"]["order"])


def _warmup_of(factors: list[float]) -> int:
    """Warm-up steps of a schedule: the first step at its peak."""
    return factors.index(max(factors)) if factors else 0


def _hf_factors(job: DictConfig, e: Mapping[str, Any]) -> list[float]:
    """transformers' own schedule of the job's name and warm-up over the engine's step count."""
    import torch
    from transformers import get_scheduler

    total = e["total_steps"]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_scheduler(job.train.lr_scheduler, opt, num_warmup_steps=warmup_steps_of(job, total),
                          num_training_steps=total)
    return [sched.lr_lambdas[0](s) for s in range(total)]


def _steps(job: DictConfig, e: Mapping[str, Any]) -> int:
    """Steps the job asks for; with packing an epoch is a pass over the packs (as for every engine)."""
    return steps_of(job, e["dataset"]["packs"] if job.method.packing else e["rows"])


def _tt_targets(e: Mapping[str, Any], job: DictConfig) -> list[str]:
    return sorted({TT_MODULES.get(a["name"].rsplit(".", 1)[-1], a["name"]) for a in e["model"]["adapters"]})


class TorchtuneFields(FieldsReachEngine):
    """torchtune: the recipe ``tune run`` would run, set up from the plan in torchtune's own environment
    (``tests/torchtune_effective.py``, one process for every plan), and what it holds."""

    FIELD_MAP = {
        "model.name_or_path": Expect(_tt_name_or_path, _model_dims),
        "model.dtype": Expect(at("dtype"), lambda job, e: dtype_of(job)),  # one dtype: auto = the precision's
        "data.chat_template": Expect(at("tokenizer.chat_template"), lambda job, e: template_of(job)),
        "data.kind": lambda e, job: "preference" if e["dataset"]["preference"] else e["dataset"]["args"]["kind"],
        "data.eval": at("validation"),
        "method.name": at("recipe_class", lambda c: TT_RECIPES.get(c, c)),
        "method.completion_only_loss": at("dataset.args.completion_only_loss"),
        "method.packing": at("collate", lambda name: name == "padded_collate_packed"),
        "method.beta": _tt_beta,
        "method.loss_type": _tt_loss_type,
        "peft.type": _tt_peft_type,
        "peft.r": lambda e, job: _adapters(e, "rank"),
        "peft.alpha": lambda e, job: _adapters(e, "alpha"),
        "peft.dropout": lambda e, job: _adapters(e, "dropout"),
        "peft.target_modules": Expect(_tt_targets, lambda job, e: targets_of(job)),
        "train.epochs": Expect(at("total_steps"), lambda job, e: _steps(job, e)),
        "train.max_steps": Expect(at("total_steps"), lambda job, e: _steps(job, e)),
        "train.batch_size": at("batch_size"),
        "train.grad_accum": at("grad_accum"),
        "train.learning_rate": at("optimizer.lr"),
        "train.lr_scheduler": Expect(at("lr_factors"), _hf_factors),
        "train.warmup_ratio": Expect(lambda e, job: _warmup_of(e["lr_factors"]),
                                     lambda job, e: warmup_steps_of(job, e["total_steps"])),
        "train.weight_decay": at("optimizer.weight_decay"),
        "train.optimizer": at("optimizer.class", lambda c: {"AdamW": "adamw", "SGD": "sgd"}.get(c, c)),
        "train.max_grad_norm": _tt_max_grad_norm,
        "train.max_length": at("tokenizer.max_seq_len"),
        "train.precision": at("dtype", lambda d: TT_PRECISION.get(d, d)),
        "train.gradient_checkpointing": agree(at("activation_checkpointing"), at("checkpoint_wrapped")),
        "train.device": at("device"),
        "train.seed": agree(at("seed"), at("dataset.args.seed")),
        "train.shuffle": _tt_shuffle,
        "train.logging_steps": at("log_every_n_steps"),
        "train.save_artifacts": at("metric_logger.artifacts", lambda a: a != "none"),
        "train.save_steps": at("optimizer.save_steps"),
    }

    def effective_configs(self, run_dirs: list[Path]) -> list[Mapping[str, Any]]:
        """Every plan's recipe set up in one process of torchtune's interpreter (the backend's ``python()``)."""
        from core import plugins
        from core.conformance.jobs import compose

        if not run_dirs:
            return []
        python = plugins.registry().backend("torchtune")(compose(["backend=torchtune"])).python()
        out = run_dirs[0].parent / "torchtune-effective.json"
        proc = subprocess.run([python, str(HERE / "torchtune_effective.py"), str(out), *map(str, run_dirs)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                   "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"})
        assert proc.returncode == 0, f"torchtune_effective.py failed:\n{proc.stderr[-4000:]}"
        return json.loads(out.read_text())

PROVIDERS: dict[str, type[FieldsReachEngine]] = {"trl": TrlFields, "torchtune": TorchtuneFields}
"""First-party backend -> the class that reads its engine's effective configuration (every first-party backend
has one: a backend missing here fails the suite's check, it is not skipped)."""
