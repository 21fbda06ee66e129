"""anytune backend ``hf``: plain Hugging Face ``transformers.Trainer`` + ``peft``, SFT only.

A third-party backend in one package, and the template to copy: this module is
what the ``anytune`` entry point names. It holds the three things anytune needs —
the backend class (name, capability table, ``plan``), its config node, and the
``register_backends`` hook. ``translate.py`` turns the canonical job into
``plan/hf_args.json``; ``worker.py`` runs it in a child process.

Nothing here imports torch, transformers or peft: ``python -m core`` loads every
plugin at start-up, so engines are imported inside the worker only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import core
from core import hftrainer

from anytune_hf import translate

__version__ = "0.1.0"


class HfBackend(core.Backend):
    """transformers.Trainer + peft: SFT with LoRA, DoRA or full fine-tune, on CPU or CUDA."""

    name: ClassVar[str] = "hf"
    engine_distribution: ClassVar[str] = "transformers"
    install_hint: ClassVar[str] = "pip install ./contrib/anytune-hf"
    description: ClassVar[str] = "plain transformers.Trainer + peft, SFT only (contrib template)"
    # The truth about this backend: what is not listed (packing, DPO/ORPO, QLoRA,
    # preference data) is refused at validation, and docs/ builds its matrix from it.
    capabilities: ClassVar[core.Capabilities] = core.Capabilities(
        supports={
            "method.name": frozenset({"sft"}),
            "peft.type": frozenset({"none", "lora", "dora"}),
            "data.kind": frozenset({"messages", "prompt_completion", "text"}),
            "train.device": frozenset({"cpu", "cuda"}),
            "train.precision": frozenset({"fp32", "bf16", "fp16"}),
            "train.optimizer": frozenset(hftrainer.OPTIMIZERS),
            "train.lr_scheduler": frozenset(hftrainer.SCHEDULERS),
            "method.packing": frozenset({False}),
            "method.completion_only_loss": frozenset({True, False}),
            "train.gradient_checkpointing": frozenset({False, True}),
            "data.eval": frozenset({False, True}),
            "train.shuffle": frozenset({True, False}),
        },
    )

    def plan(self, run_dir: Path) -> core.Plan:
        """Write ``plan/hf_args.json`` and the worker into ``run_dir/plan``; return the command."""
        return translate.plan(self, run_dir)


@dataclass
class HfConfig(core.BackendConfig):
    """Config node ``backend=hf``. ``native`` keys go straight into ``transformers.TrainingArguments``."""

    name: str = "hf"
    """Backend name."""
    pad_to_multiple_of: int = 0
    """Pad each batch to a multiple of this many tokens (0: to its longest row); 8 or 64 suits tensor cores."""
    attn_implementation: str = ""
    """Attention kernel passed to from_pretrained (eager, sdpa, flash_attention_2); empty: transformers' default."""


HfBackend.config_class = HfConfig


@core.hookimpl
def register_backends(register):
    """Register the ``hf`` backend with anytune."""
    register(HfBackend)
