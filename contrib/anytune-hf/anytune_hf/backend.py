"""The ``hf`` backend class and its config node."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import core
from plugins import hftrainer

from anytune_hf import translate

HERE = Path(__file__).parent


@dataclass
class HfConfig(core.BackendConfig):
    """Config node ``backend=hf``. ``native`` keys go straight into ``transformers.TrainingArguments``."""

    name: str = "hf"
    """Backend name."""
    pad_to_multiple_of: int = core.number(0, ge=0)
    """Pad each batch to a multiple of this many tokens (0: to its longest row); 8 or 64 suits tensor cores."""
    attn_implementation: str = ""
    """Attention kernel passed to from_pretrained (eager, sdpa, flash_attention_2); empty: transformers' default."""


class HfBackend(core.Trainer):
    """transformers.Trainer + peft: SFT with LoRA, DoRA or full fine-tune, on CPU or CUDA."""

    name: ClassVar[str] = "hf"
    config_class: ClassVar[type] = HfConfig
    engine_distribution: ClassVar[str] = "transformers"
    install_hint: ClassVar[str] = "pip install ./contrib/anytune-hf"
    description: ClassVar[str] = "plain transformers.Trainer + peft, SFT only (contrib template)"
    # The truth about this backend: a value not listed (packing, DPO/ORPO, QLoRA, preference
    # data) is refused at validation, and docs/ builds its matrix from this table.
    capabilities: ClassVar[core.Capabilities] = core.Capabilities(
        supports={
            "model.dtype": frozenset({"auto", "float32", "bfloat16", "float16"}),
            "model.trust_remote_code": frozenset({False, True}),
            "method.name": frozenset({"sft"}),
            "method.packing": frozenset({False}),
            "method.completion_only_loss": frozenset({True, False}),
            "peft.type": frozenset({"none", "lora", "dora"}),
            "data.kind": frozenset({"messages", "prompt_completion", "text"}),
            "data.eval": frozenset({False, True}),
            "train.device": frozenset({"cpu", "cuda"}),
            "train.precision": frozenset({"fp32", "bf16", "fp16"}),
            "train.optimizer": frozenset(hftrainer.OPTIMIZERS),
            "train.lr_scheduler": frozenset(hftrainer.SCHEDULERS),
            "train.gradient_checkpointing": frozenset({False, True}),
            "train.shuffle": frozenset({True, False}),
            "train.save_artifacts": frozenset({True, False}),
        },
        # Every canonical field translate.py reads (the model, the template of record, every
        # peft.* and train.* field); method.name and method.packing are pinned by the table
        # above (sft, no packing). SFT only: the preference fields beta and loss_type are
        # not read, so setting them is refused rather than silently ignored.
        reads=core.fields("model.*", "data.chat_template", "method.*", "peft.*", "train.*",
                          exclude=("method.beta", "method.loss_type", "train.devices", "train.nodes",
                                   "train.strategy")),
        needs=frozenset({"tokenizer", "template", "weights", "device"}),
    )

    def plan(self, ctx: core.Context) -> core.Plan:
        """Write ``plan/hf_args.json``; ship the worker with the run protocol, loss masks and HF glue."""
        files = [ctx.write_json("hf_args.json", translate.native_spec(ctx.job, ctx.data, ctx.rel, ctx.resume)),
                 *ctx.ship(HERE / "worker.py", rename={"worker.py": "hf_worker.py"}),
                 *hftrainer.ship(ctx)]
        return core.Plan(command=[self.python(), files[1], files[0]], files=files)
