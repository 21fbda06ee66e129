"""The canonical job: what a fine-tuning job *is*, independent of any engine.

Each field's docstring (the string under it) is its reference documentation;
``docs/config.md`` is generated from this file. This file is also the one place
that holds each field's default, its allowed values (``choice``), its range
(``number``), whether the core itself reads it for every backend (``core``), and
when it applies at all (``when``); validation and the capability features
(``core.capabilities.FEATURES``) are derived from it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


def choice(default: Any, *values: Any, **meta: Any) -> Any:
    """A field whose value must be one of ``values``."""
    return field(default=default, metadata={"choices": list(values), **meta})


def number(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, **meta: Any) -> Any:
    """A numeric field that must lie in a range (``ge``/``gt`` below, ``le``/``lt`` above); None stays allowed
    for Optional fields."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return field(default=default, metadata={"range": bounds, **meta})


def core(default: Any = None, **meta: Any) -> Any:
    """A field the core reads for every backend (data loading, run control): never refused by capabilities."""
    if isinstance(default, (dict, list)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"core": True, **meta})
    return field(default=default, metadata={"core": True, **meta})


#: ``when`` metadata: the field has an effect only when another field holds one of these values.
SFT_ONLY = {"method.name": ("sft",)}
PREFERENCE_ONLY = {"method.name": ("dpo", "orpo", "kto")}
DPO_ONLY = {"method.name": ("dpo",)}
WITH_ADAPTER = {"peft.type": ("lora", "dora", "qlora")}


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
    train: str = core(MISSING)
    """Training file: .jsonl, .json, .csv, .parquet, optionally .gz."""
    eval: Optional[str] = core(None)
    """Held-out file in the same format; null: split eval_fraction off train."""
    format: str = choice("auto", "auto", "messages", "sharegpt", "alpaca", "prompt_completion",
                         "prompt_completion_chat", "preference", "unpaired", "text", core=True)
    """Row format; auto detects it from the first row's fields."""
    columns: Dict[str, str] = core({})
    """Map canonical field -> column in the file, e.g. {prompt: question, completion: answer}."""
    eval_fraction: float = number(0.0, ge=0, lt=1, core=True)
    """Fraction of train rows held out for evaluation when data.eval is null."""
    max_rows: Optional[int] = number(None, ge=1, core=True)
    """Use only the first N valid rows of train (null: all)."""
    on_bad_rows: str = choice("error", "error", "skip", core=True)
    """error: stop before any model loads and list bad rows; skip: drop them and record how many."""
    chat_template: Optional[str] = None
    """Chat template of record: null = the tokenizer's own; a built-in name (chatml, llama3, zephyr) or a .jinja path."""
    system_prompt: Optional[str] = core(None)
    """System message prepended to conversations that have none (null: none added)."""


@dataclass
class MethodConfig:
    name: str = choice("sft", "sft", "dpo", "orpo", "kto")
    """Training objective: supervised fine-tuning, a paired preference method (dpo, orpo; prompt/chosen/rejected data) or kto (unpaired preference: prompt/completion rows with a boolean label)."""
    completion_only_loss: bool = field(default=True, metadata={"when": SFT_ONLY})
    """SFT: loss on assistant/completion tokens only (false: on every token)."""
    packing: bool = field(default=False, metadata={"when": SFT_ONLY})
    """SFT: pack several short examples into each max_length sequence."""
    beta: float = number(0.1, gt=0, when=PREFERENCE_ONLY)
    """DPO and KTO: KL strength; ORPO: weight of the odds-ratio term (lambda)."""
    loss_type: str = choice("sigmoid", "sigmoid", "ipo", "hinge", when=DPO_ONLY)
    """DPO loss variant."""


@dataclass
class PeftConfig:
    type: str = choice("lora", "none", "lora", "dora", "qlora")
    """none = full fine-tune; lora; dora (weight-decomposed LoRA); qlora (LoRA on a 4-bit base, needs CUDA)."""
    r: int = number(16, ge=1, when=WITH_ADAPTER)
    """LoRA rank."""
    alpha: int = number(32, gt=0, when=WITH_ADAPTER)
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = number(0.0, ge=0, lt=1, when=WITH_ADAPTER)
    """Dropout on the LoRA input."""
    target_modules: List[str] = field(default_factory=lambda: ["all-linear"], metadata={"when": WITH_ADAPTER})
    """Module names to adapt; [all-linear] = every linear layer but the output head."""


@dataclass
class TrainConfig:
    epochs: float = number(1.0, ge=0)
    """Passes over the training data (ignored when max_steps > 0)."""
    max_steps: int = number(-1, ge=-1)
    """Optimiser steps to run; -1 = run epochs."""
    batch_size: int = number(4, ge=1)
    """Examples per device per micro-step."""
    grad_accum: int = number(1, ge=1)
    """Micro-steps accumulated per optimiser step (effective batch = batch_size * grad_accum * devices * nodes)."""
    learning_rate: float = number(2e-4, gt=0)
    """Peak learning rate."""
    lr_scheduler: str = choice("linear", "linear", "cosine", "constant", "constant_with_warmup")
    """Learning-rate schedule after warm-up."""
    warmup_ratio: float = number(0.0, ge=0, lt=1)
    """Fraction of steps spent warming up linearly from 0."""
    weight_decay: float = number(0.0, ge=0)
    """Decoupled weight decay."""
    optimizer: str = choice("adamw", "adamw", "sgd")
    """Optimiser (torch's AdamW or SGD)."""
    max_grad_norm: float = number(1.0, ge=0)
    """Gradient clipping norm (0 = off)."""
    max_length: int = number(512, ge=8)
    """Longest sequence in tokens; longer examples are truncated (counted in data stats)."""
    precision: str = choice("auto", "auto", "fp32", "bf16", "fp16", resolved=True)
    """Compute precision; auto = bf16 on a GPU that has it, else fp32."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    device: str = choice("auto", "auto", "cpu", "cuda", resolved=True)
    """Where to train; auto = cuda if available, else cpu."""
    seed: int = number(42, ge=0)
    """Seed for initialisation, data order and dropout."""
    shuffle: bool = True
    """Shuffle the examples each epoch (with seed); false: every engine reads data/train.jsonl in order, so engines see the same batches."""
    logging_steps: int = number(1, ge=1)
    """Write a metrics row every N optimiser steps."""
    eval_steps: int = number(0, ge=0)
    """Evaluate every N steps (0 = only at the end, when there is eval data)."""
    save_artifacts: bool = True
    """Save the adapter / model into artifacts/ at the end."""
    devices: int = number(1, ge=1)
    """Processes per node, one per GPU (on CPU: processes over gloo); above 1 the engine's own launcher starts them."""
    nodes: int = number(1, ge=1)
    """Machines; above 1 each node's rank and the rendezvous come from the scheduler's environment (docs/distributed.md)."""
    strategy: str = choice("ddp", "ddp", "fsdp", "deepspeed")
    """How several devices share the work: ddp (a full replica each), fsdp (full shard, FSDP2), deepspeed (ZeRO)."""
    save_steps: int = number(0, ge=0)
    """Save a resumable checkpoint (weights, optimiser, schedule, data position) every N optimiser steps into artifacts/checkpoints/checkpoint-N (0 = none); Ctrl-C saves one where the engine can."""


@dataclass
class StepConfig:
    """Base of every step's config node (trainer, exporter, evaluator); a plugin subclasses it."""

    name: str = MISSING
    """Registered name of the step (the group option: backend=<name>, export=[<name>], eval=[<name>])."""
    python: Optional[str] = None
    """Interpreter that runs the step; null = the current one if it has the engine, else the step's managed environment."""


@dataclass
class BackendConfig(StepConfig):
    """Base of every backend's (trainer's) config node; a backend subclasses it with engine fields."""

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
    export: Dict[str, Any] = field(default_factory=dict)
    """Exporters run after training, each with its own node: export=[merged] (python -m core.backends lists them)."""
    eval: Dict[str, Any] = field(default_factory=dict)
    """Evaluators run after training and export, each with its own node: eval=[heldout]; scores go to eval.json."""
    plan_only: bool = False
    """Write the native plan into the run directory and stop (run nothing)."""
    offline: bool = False
    """Keep every library away from any hub and telemetry; fail fast where the network would be needed."""
    debug: bool = False
    """Show full tracebacks for user errors."""
    run_dir: Optional[str] = None
    """Run directory; null = a new one under runs/<date>/ (never shared with another job). One that already holds a run is refused unless overwrite=true."""
    overwrite: bool = False
    """Allow run_dir to name a directory that already holds a run (its files are replaced)."""
    quiet: bool = False
    """Print only the run directory on stdout (for scripts): no progress display, no summary."""
    resume: Optional[str] = None
    """Run directory of an interrupted or failed run to continue, in place, from its last checkpoint (python -m core resume=runs/...): its config.yaml is the job."""


#: The canonical sections: each field is checked against the schema and the backend's capabilities.
SECTIONS = {"model": ModelConfig, "data": DataConfig, "method": MethodConfig,
            "peft": PeftConfig, "train": TrainConfig}
#: Config groups whose options are steps, and the kind of step each holds.
STEP_GROUPS = {"backend": "trainer", "export": "exporter", "eval": "evaluator"}
