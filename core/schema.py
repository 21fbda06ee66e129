"""The canonical job: what a fine-tuning job *is*, independent of any engine.

Each field's docstring (the string under it) is its reference documentation;
``docs/config.md`` is generated from this file. Fields with a fixed set of
values list it in ``choices`` metadata; validation names them on a bad value.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


def choice(default: Any, *values: Any) -> Any:
    """A field whose value must be one of ``values``."""
    return field(default=default, metadata={"choices": list(values)})


@dataclass
class ModelConfig:
    name_or_path: str = MISSING
    """Local directory of a Hugging Face model, or a hub id (downloaded by the engine unless offline)."""
    dtype: str = choice("auto", "auto", "float32", "bfloat16", "float16")
    """Dtype the weights are loaded in; auto follows train.precision."""
    trust_remote_code: bool = False
    """Allow the model repository's own Python code to run."""


@dataclass
class DataConfig:
    train: str = MISSING
    """Training file: .jsonl, .json, .csv, .parquet, optionally .gz."""
    eval: Optional[str] = None
    """Held-out file in the same format; null: split eval_fraction off train."""
    format: str = choice("auto", "auto", "messages", "sharegpt", "alpaca", "prompt_completion",
                         "preference", "text")
    """Row format; auto detects it from the first row's fields."""
    columns: Dict[str, str] = field(default_factory=dict)
    """Map canonical field -> column in the file, e.g. {prompt: question, completion: answer}."""
    eval_fraction: float = 0.0
    """Fraction of train rows held out for evaluation when data.eval is null."""
    max_rows: Optional[int] = None
    """Use only the first N valid rows of train (null: all)."""
    on_bad_rows: str = choice("error", "error", "skip")
    """error: stop before any model loads and list bad rows; skip: drop them and record how many."""
    chat_template: Optional[str] = None
    """Chat template of record: null = the tokenizer's own; a built-in name (chatml, llama3, zephyr) or a .jinja path."""
    system_prompt: Optional[str] = None
    """System message prepended to conversations that have none (null: none added)."""


@dataclass
class MethodConfig:
    name: str = choice("sft", "sft", "dpo", "orpo")
    """Training objective: supervised fine-tuning or a preference method."""
    completion_only_loss: bool = True
    """SFT: loss on assistant/completion tokens only (false: on every token)."""
    packing: bool = False
    """SFT: pack several short examples into each max_length sequence."""
    beta: float = 0.1
    """DPO: KL strength; ORPO: weight of the odds-ratio term (lambda)."""
    loss_type: str = choice("sigmoid", "sigmoid", "ipo", "hinge")
    """DPO loss variant."""


@dataclass
class PeftConfig:
    type: str = choice("lora", "none", "lora", "dora", "qlora")
    """none = full fine-tune; lora; dora (weight-decomposed LoRA); qlora (LoRA on a 4-bit base, needs CUDA)."""
    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    target_modules: List[str] = field(default_factory=lambda: ["all-linear"])
    """Module names to adapt; [all-linear] = every linear layer but the output head."""


@dataclass
class TrainConfig:
    epochs: float = 1.0
    """Passes over the training data (ignored when max_steps > 0)."""
    max_steps: int = -1
    """Optimiser steps to run; -1 = run epochs."""
    batch_size: int = 4
    """Examples per device per micro-step."""
    grad_accum: int = 1
    """Micro-steps accumulated per optimiser step (effective batch = batch_size * grad_accum * devices)."""
    learning_rate: float = 2e-4
    """Peak learning rate."""
    lr_scheduler: str = choice("linear", "linear", "cosine", "constant", "constant_with_warmup")
    """Learning-rate schedule after warm-up."""
    warmup_ratio: float = 0.0
    """Fraction of steps spent warming up linearly from 0."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    optimizer: str = choice("adamw", "adamw", "sgd")
    """Optimiser (torch's AdamW or SGD)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 = off)."""
    max_length: int = 512
    """Longest sequence in tokens; longer examples are truncated (counted in data stats)."""
    precision: str = choice("auto", "auto", "fp32", "bf16", "fp16")
    """Compute precision; auto = bf16 on a GPU that has it, else fp32."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    device: str = choice("auto", "auto", "cpu", "cuda")
    """Where to train; auto = cuda if available, else cpu."""
    seed: int = 42
    """Seed for initialisation, data order and dropout."""
    shuffle: bool = True
    """Shuffle the examples each epoch (with seed); false: every engine reads data/train.jsonl in order, so engines see the same batches."""
    logging_steps: int = 1
    """Write a metrics row every N optimiser steps."""
    eval_steps: int = 0
    """Evaluate every N steps (0 = only at the end, when there is eval data)."""
    save_artifacts: bool = True
    """Save the adapter / model into artifacts/ at the end."""


@dataclass
class BackendConfig:
    """Base of every backend's config node; a backend subclasses it with engine fields."""

    name: str = MISSING
    """Registered backend name (the group option: backend=<name>)."""
    python: Optional[str] = None
    """Interpreter that runs the engine; null = the current one if it has the engine, else the backend's managed environment."""
    native: Dict[str, Any] = field(default_factory=dict)
    """Raw engine keys passed through untouched, after translation (the escape hatch)."""


@dataclass
class JobConfig:
    backend: BackendConfig = MISSING
    """Engine that runs the job (a registered backend)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Base model."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training and evaluation data."""
    method: MethodConfig = field(default_factory=MethodConfig)
    """Training objective."""
    peft: PeftConfig = field(default_factory=PeftConfig)
    """Parameter-efficient fine-tuning."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Hyperparameters and hardware."""
    plan_only: bool = False
    """Write the native plan into the run directory and stop (run nothing)."""
    offline: bool = False
    """Keep every library away from any hub and telemetry; fail fast where the network would be needed."""
    debug: bool = False
    """Show full tracebacks for user errors."""
    run_dir: Optional[str] = None
    """Run directory; null = Hydra's output directory."""


SECTIONS = {"model": ModelConfig, "data": DataConfig, "method": MethodConfig,
            "peft": PeftConfig, "train": TrainConfig}
