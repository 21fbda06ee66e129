"""Translation of the canonical job into a torchtune 0.6.1 recipe config (``plan/torchtune.yaml``):
plain dicts, no engine import.

The model's family comes from its Hugging Face ``config.json`` (``architectures``);
its dimensions become the arguments of torchtune's model builder, and torchtune's
HF checkpointer reads its safetensors. Tokenizer, data, optimiser, schedule and
metrics are anytune components shipped in ``plan/anytune_torchtune.py``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

import core
from core import ConfigError, runproto

PLAN_FILE = "torchtune.yaml"
"""The recipe config, in the trainer's plan directory."""
COMPONENTS = "anytune_torchtune.py"
"""The shipped components (``components.py``), in the trainer's plan directory."""
TUNE_DIR = f"{runproto.ARTIFACTS}/torchtune"
"""Where the recipe checkpoints; the metric logger moves its last checkpoint into anytune's layout and removes it."""
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""canonical train.precision -> the model.dtype it equals"""

#: canonical name -> torchtune recipe, per (method, full fine-tune?)
RECIPES = {("sft", False): "lora_finetune_single_device", ("sft", True): "full_finetune_single_device",
           ("dpo", False): "lora_dpo_single_device"}
#: the same, for several processes (``tune run --nproc_per_node``): torchtune's FSDP2 (``fully_shard``) recipes
DISTRIBUTED_RECIPES = {("sft", False): "lora_finetune_distributed", ("sft", True): "full_finetune_distributed",
                       ("dpo", False): "lora_dpo_distributed"}
#: Hugging Face module names -> torchtune's, for peft.target_modules
ATTN = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "output_proj"}
MLP = ("gate_proj", "up_proj", "down_proj")
DPO_LOSSES = {"sigmoid": ("torchtune.rlhf.loss.DPOLoss", "beta"), "hinge": ("torchtune.rlhf.loss.RSOLoss", "gamma")}


@dataclass(frozen=True)
class Family:
    """A model family torchtune has builders for."""

    architectures: tuple[str, ...]
    """Hugging Face ``architectures`` values that map here."""
    builder: str
    """torchtune builder of the full model."""
    lora_builder: str
    """torchtune builder of the LoRA/DoRA model."""
    model_type: str
    """``model_type`` of torchtune's HF checkpointer (selects the weight conversion)."""
    description: str
    """Shown in errors and docs."""


FAMILIES = (
    Family(("LlamaForCausalLM",), "torchtune.models.llama3_2.llama3_2", "torchtune.models.llama3_2.lora_llama3_2",
           "LLAMA3_2", "Llama (Llama 2, 3, 3.1, 3.2 and other Llama-architecture models: LlamaForCausalLM)"),
)


def family_of(hf_config: dict, where: str) -> Family:
    """The family of a model's ``config.json``.

    :raises ConfigError: an architecture no family covers; names the supported ones.
    """
    archs = hf_config.get("architectures") or []
    for fam in FAMILIES:
        if any(a in fam.architectures for a in archs):
            return fam
    supported = "; ".join(f.description for f in FAMILIES)
    raise ConfigError(f"model.name_or_path={where} is {', '.join(archs) or 'an unknown architecture'}; "
                      f"the torchtune backend has builders for: {supported}. Use another backend "
                      "(e.g. backend=trl) for this model.")


def rope(hf_config: dict) -> tuple[float, float]:
    """(rope_base, scale_factor) of a Llama config; scale 1 is plain RoPE.

    Reads transformers 5's ``rope_parameters`` and older ``rope_theta``/``rope_scaling``.
    :raises ConfigError: a RoPE scaling torchtune's Llama 3 RoPE cannot reproduce.
    """
    params = dict(hf_config.get("rope_parameters") or {})
    scaling = dict(hf_config.get("rope_scaling") or {})
    theta = params.get("rope_theta", hf_config.get("rope_theta", 10000.0))
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind == "default":
        return float(theta), 1.0
    if kind == "llama3":
        p = {**scaling, **params}
        expected = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        odd = {k: p.get(k) for k, v in expected.items() if float(p.get(k, v)) != v}
        if not odd:
            return float(theta), float(p.get("factor", 8.0))
        raise ConfigError(f"the model's llama3 RoPE scaling has {odd}; torchtune's Llama3ScaledRoPE fixes "
                          f"{expected}")
    raise ConfigError(f"the model uses RoPE type '{kind}', which torchtune's Llama builders do not implement "
                      "(supported: default, llama3)")


def model_args(hf_config: dict, max_seq_len: int) -> dict[str, Any]:
    """Builder arguments for a Llama-architecture ``config.json``.

    :raises ConfigError: a feature torchtune's Llama builder lacks (biases, another activation, head_dim).
    """
    heads, dim = hf_config["num_attention_heads"], hf_config["hidden_size"]
    problems = []
    if hf_config.get("attention_bias"):
        problems.append("attention_bias=true")
    if hf_config.get("mlp_bias"):
        problems.append("mlp_bias=true")
    if hf_config.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf_config['hidden_act']}")
    if hf_config.get("head_dim") not in (None, dim // heads):
        problems.append(f"head_dim={hf_config['head_dim']} (torchtune's Llama uses hidden_size/heads={dim // heads})")
    if problems:
        raise ConfigError(f"torchtune's Llama builder cannot reproduce this model: {', '.join(problems)}")
    base, scale = rope(hf_config)
    return {"vocab_size": hf_config["vocab_size"], "num_layers": hf_config["num_hidden_layers"],
            "num_heads": heads, "num_kv_heads": hf_config.get("num_key_value_heads") or heads,
            "embed_dim": dim, "intermediate_dim": hf_config["intermediate_size"], "max_seq_len": max_seq_len,
            "norm_eps": hf_config.get("rms_norm_eps", 1e-5), "rope_base": base, "scale_factor": scale,
            "attn_dropout": float(hf_config.get("attention_dropout", 0.0)),
            "tie_word_embeddings": bool(hf_config.get("tie_word_embeddings", False))}


def model_dir(name_or_path: str) -> Path:
    """Local directory of the model: the path itself, or its snapshot in the Hugging Face cache.

    :raises ConfigError: neither exists (torchtune's checkpointer reads local files).
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path.resolve()
    hub = Path(os.environ.get("HF_HUB_CACHE")
               or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub").expanduser()
    repo = hub / f"models--{name_or_path.replace('/', '--')}"
    ref = repo / "refs" / "main"
    if ref.is_file():
        snap = repo / "snapshots" / ref.read_text().strip()
        if (snap / "config.json").is_file():
            return snap
    raise ConfigError(f"model.name_or_path={name_or_path}: the torchtune backend reads a local model directory "
                      f"and this is neither a directory nor in the Hugging Face cache ({hub}); download it "
                      f"first: hf download {name_or_path}")


#: torchao's NF4 (torchtune's FrozenNF4Linear): blocks of 64 weights, their scales double-quantised in blocks of 256
NF4_BLOCK = 64 * 256


def nf4_problems(hf_config: dict) -> list[str]:
    """Base linear layers whose weight torchao's ``to_nf4`` cannot quantise (size not a multiple of 64 x 256)."""
    dim, heads = hf_config["hidden_size"], hf_config["num_attention_heads"]
    head_dim = hf_config.get("head_dim") or dim // heads
    kv = hf_config.get("num_key_value_heads") or heads
    shapes = {"q_proj": (heads * head_dim, dim), "k_proj": (kv * head_dim, dim), "v_proj": (kv * head_dim, dim),
              "o_proj": (dim, heads * head_dim), "gate_proj": (hf_config["intermediate_size"], dim),
              "up_proj": (hf_config["intermediate_size"], dim), "down_proj": (dim, hf_config["intermediate_size"])}
    return [f"{name} {o}x{i}" for name, (o, i) in shapes.items() if (o * i) % NF4_BLOCK]


def lora_targets(targets: list[str], tied: bool) -> dict[str, Any]:
    """peft.target_modules (Hugging Face names) -> torchtune's lora_attn_modules / apply_lora_to_* flags.

    :raises ConfigError: a module torchtune cannot adapt alone (part of the MLP) or at all.
    """
    if targets == ["all-linear"]:
        return {"lora_attn_modules": list(ATTN.values()), "apply_lora_to_mlp": True, "apply_lora_to_output": False}
    unknown = [t for t in targets if t not in ATTN and t not in MLP and t != "lm_head"]
    if unknown:
        raise ConfigError(f"peft.target_modules has {unknown}; the torchtune backend adapts "
                          f"{', '.join([*ATTN, *MLP, 'lm_head'])} or all-linear")
    mlp = [t for t in MLP if t in targets]
    if mlp and len(mlp) != len(MLP):
        raise ConfigError(f"peft.target_modules has {mlp} of the MLP; torchtune adapts all of "
                          f"{', '.join(MLP)} or none (apply_lora_to_mlp)")
    if "lm_head" in targets and tied:
        raise ConfigError("peft.target_modules has lm_head, but this model ties it to the embeddings; "
                          "torchtune cannot put LoRA on a tied output layer")
    return {"lora_attn_modules": [ATTN[t] for t in ATTN if t in targets], "apply_lora_to_mlp": bool(mlp),
            "apply_lora_to_output": "lm_head" in targets}


def total_steps(rows: int, batch: int, accum: int, max_steps: int, epochs: float) -> tuple[int, int]:
    """(optimiser steps, passes over the data) of the job (``runproto.steps_and_passes``); torchtune's data
    loader drops an incomplete batch, so the data set serves exactly those steps' examples.

    :raises ConfigError: fewer rows than one batch.
    """
    if rows < batch:
        raise ConfigError(f"the training data has {rows} rows, fewer than train.batch_size={batch}; torchtune "
                          "drops an incomplete batch, so nothing would train: lower train.batch_size")
    return runproto.steps_and_passes(rows, batch, accum, max_steps, epochs)


def hf_config(name_or_path: str) -> tuple[Path, dict]:
    """The model's local directory and its ``config.json``.

    :raises ConfigError: no local directory (see :func:`model_dir`) or an unreadable ``config.json``.
    """
    path = model_dir(name_or_path)
    try:
        return path, json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path / 'config.json'}: {exc}") from exc


def weight_files(path: Path) -> list[str]:
    """The model's weight files for torchtune's HF checkpointer: its safetensors, else its ``*.bin``."""
    return sorted(f.name for f in path.glob("*.safetensors")) or sorted(f.name for f in path.glob("*.bin"))


def check(job: Any) -> None:
    """What the capability table cannot say: the model family, LoRA targets, method/PEFT combinations and
    dtype, before any data is read.

    :raises ConfigError: naming the field and what torchtune can do instead.
    """
    path, hf = hf_config(str(job.model.name_or_path))
    family_of(hf, str(job.model.name_or_path))
    model_args(hf, job.train.max_length)
    m, p = job.method, job.peft
    if m.name == "dpo" and p.type == "none":
        raise ConfigError("method.name=dpo with peft.type=none: torchtune's full-weight DPO recipe is "
                          "distributed-only (full_dpo_distributed), and anytune has not built it; use peft.type=lora")
    if m.name == "dpo" and p.type == "dora":
        raise ConfigError("method.name=dpo with peft.type=dora: torchtune's lora_dpo_single_device "
                          "does not initialise DoRA magnitudes; use peft.type=lora")
    if p.type == "qlora" and nf4_problems(hf):
        raise ConfigError(f"peft.type=qlora: torchao's NF4 (torchtune's quantize_base) needs every base linear "
                          f"weight to hold a multiple of {NF4_BLOCK} values (blocks of 64, scales in blocks "
                          f"of 256); this model has {', '.join(nf4_problems(hf))}. Use peft.type=lora, or "
                          "backend=trl (bitsandbytes)")
    if p.type != "none":
        lora_targets(list(p.target_modules), bool(hf.get("tie_word_embeddings", False)))
    if core.world_size(job) > 1:
        several = f"train.devices × train.nodes = {core.world_size(job)}"
        if p.type != "none":
            raise ConfigError(f"peft.type={p.type} with {several}: torchtune 0.6.1's LoRA recipes "
                              "(lora_finetune_distributed, lora_dpo_distributed) start with "
                              "init_process_group(\"cuda:nccl,cpu:gloo\"), which fails where torch has no NCCL "
                              "(its CPU builds), so CI cannot run them, and no several-GPU machine has run them "
                              "yet; only the full fine-tune (full_finetune_distributed) is built. Use peft.type=none, "
                              "one process, or backend=trl")
        if m.packing:
            raise ConfigError(f"method.packing=true with {several}: packing on torchtune's distributed recipes is "
                              "not built (tested); use one process or backend=trl")
        if job.train.save_steps > 0:
            raise ConfigError(f"train.save_steps={job.train.save_steps} with {several}: anytune's resumable "
                              "checkpoints hold whole tensors and torchtune's distributed recipes shard them "
                              "(FSDP2); not built. Use train.save_steps=0, or one process")
    if job.model.dtype not in ("auto", DTYPES[job.train.precision]):
        raise ConfigError(f"model.dtype={job.model.dtype} with train.precision={job.train.precision}: torchtune "
                          "trains in one dtype (its `dtype`); set model.dtype=auto")
    if not weight_files(path):
        raise ConfigError(f"{path} has no *.safetensors or *.bin weights for torchtune's HF checkpointer")


def native_config(job: Any, data: Any, rel: Callable[[Any], str] = str,
                  components: str = "plan.anytune_torchtune", resume: str | None = None) -> tuple[str, dict[str, Any]]:
    """(recipe name, recipe config) for the job.

    :param data: the prepared data (``core.DataInfo``: kind, row counts in ``stats``, train/template paths).
    :param rel: turns a path into the form the plan names it by (relative to the run directory).
    :param components: module the recipe imports anytune's components from (``plan/anytune_torchtune.py``
        as a dotted name from the run directory, which ``tune run`` puts on ``sys.path``).
    :param resume: checkpoint folder (``artifacts/checkpoints/checkpoint-<step>``) to continue from: anytune's
        optimiser loads it, the data set skips the trained steps, the schedule and the metrics go on from there.
    """
    t, m, p = job.train, job.method, job.peft
    path, hf = hf_config(str(job.model.name_or_path))
    fam = family_of(hf, str(job.model.name_or_path))
    full = p.type == "none"
    world = core.world_size(job)
    recipe = (DISTRIBUTED_RECIPES if world > 1 else RECIPES)[(m.name, full)]
    rows = int(data.stats["rows"]["train"])
    # one micro-step takes a batch per process, in turn (docs/distributed.md)
    steps, _ = total_steps(rows, t.batch_size * world, t.grad_accum, t.max_steps, t.epochs)
    if resume and world > 1:
        raise ConfigError(f"resuming {resume} with train.devices × train.nodes = {world}: anytune's resumable "
                          "checkpoints hold whole tensors and torchtune's distributed recipes shard them; resume "
                          "with one process")
    start = int(resume.rsplit("-", 1)[1]) if resume else 0
    order = {"batch_size": t.batch_size, "grad_accum": t.grad_accum, "seed": t.seed, "shuffle": bool(t.shuffle),
             "start_step": start}
    if world > 1:
        order["processes"] = world
    args = model_args(hf, t.max_length)
    if full:
        model = {"_component_": fam.builder, **args}
    else:
        model = {"_component_": fam.lora_builder,
                 **lora_targets(list(p.target_modules), args["tie_word_embeddings"]),
                 **args, "lora_rank": p.r, "lora_alpha": float(p.alpha), "lora_dropout": p.dropout,
                 "use_dora": p.type == "dora"}
        if p.type == "qlora":  # the frozen base as torchao NF4 (FrozenNF4Linear), LoRA on top
            model["quantize_base"] = True
    source = rel(data.train)
    tokenizer = {"_component_": f"{components}.ChatTemplateTokenizer", "path": str(path),
                 "chat_template": rel(data.template) if data.template else None, "max_seq_len": t.max_length}
    if m.name == "dpo":
        dataset = {"_component_": f"{components}.preference_dataset", "source": source, "steps": steps, **order}
    elif m.packing:  # torchtune's PackedDataset; the recipe collates with padded_collate_packed
        dataset = {"_component_": f"{components}.packed_sft_dataset", "packed": True,
                   "source": source, "kind": data.kind,
                   "completion_only_loss": bool(m.completion_only_loss),
                   "max_steps": t.max_steps, "epochs": float(t.epochs), **order}
    else:
        dataset = {"_component_": f"{components}.sft_dataset", "source": source,
                   "kind": data.kind, "completion_only_loss": bool(m.completion_only_loss), "steps": steps,
                   **order}
    optimizer = {"_component_": f"{components}.{'AdamW' if t.optimizer == 'adamw' else 'SGD'}",
                 "lr": t.learning_rate, "weight_decay": t.weight_decay,
                 "save_steps": t.save_steps, "resume": resume, "start_step": start}
    clip = t.max_grad_norm if t.max_grad_norm and t.max_grad_norm > 0 else None
    config: dict[str, Any] = {
        "output_dir": TUNE_DIR,
        "model": model,
        "tokenizer": tokenizer,
        "checkpointer": {"_component_": "torchtune.training.FullModelHFCheckpointer",
                         "checkpoint_dir": str(path), "checkpoint_files": weight_files(path),
                         "model_type": fam.model_type, "output_dir": TUNE_DIR, "recipe_checkpoint": None},
        "resume_from_checkpoint": False,
        "dataset": dataset,
        "seed": t.seed,
        "shuffle": False,  # the dataset shuffles each pass with `seed` (or not: train.shuffle)
        "batch_size": t.batch_size,
        "epochs": 1,  # one epoch over `passes` shuffled passes of the data
        # packing: the dataset holds exactly the steps' packs (their number is known only once packed)
        "max_steps_per_epoch": None if m.packing else steps - start,
        "gradient_accumulation_steps": t.grad_accum,
        "optimizer": optimizer,
        "lr_scheduler": {"_component_": f"{components}.lr_schedule", "name": t.lr_scheduler,
                         "warmup_ratio": t.warmup_ratio, "start_step": start},
        "compile": bool(job.backend.get("compile", False)),
        "device": t.device,
        "dtype": {"fp32": "fp32", "bf16": "bf16"}.get(t.precision, t.precision),
        "enable_activation_checkpointing": bool(t.gradient_checkpointing),
        "enable_activation_offloading": False,
        "metric_logger": {"_component_": f"{components}.MetricLogger", "filename": runproto.METRICS_FILE,
                          "max_steps": None if m.packing and t.max_steps <= 0 else steps,
                          "train_rows": rows,
                          "examples_per_step": t.batch_size * t.grad_accum * world,
                          "artifacts": ("none" if not t.save_artifacts else "model" if full else "adapter"),
                          "start_step": start},
        "log_every_n_steps": t.logging_steps,
        "log_peak_memory_stats": False,
        "profiler": {"_component_": "torchtune.training.setup_torch_profiler", "enabled": False},
    }
    if world > 1:  # FSDP2 (fully_shard) either way; ddp keeps each process's parameters whole from forward to backward
        config.update(fsdp_reshard_after_forward=t.strategy == "fsdp", fsdp_cpu_offload=False)
    if m.name == "dpo":
        component, beta = DPO_LOSSES[m.loss_type]
        config["loss"] = {"_component_": component, beta: m.beta}
        optimizer["max_grad_norm"] = clip  # the DPO recipe does not clip; the optimiser does
    else:
        config["loss"] = {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"}
        config["clip_grad_norm"] = clip
    if full:
        config["optimizer_in_bwd"] = False
    else:
        config["save_adapter_weights_only"] = True  # never merged weights beside an adapter
    native = OmegaConf.to_container(job.backend.native, resolve=True) if job.backend.get("native") else {}
    if native:
        config = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(config), OmegaConf.create(native)))
    return recipe, config
