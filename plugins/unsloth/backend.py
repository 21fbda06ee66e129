"""The Unsloth backend class and its config node."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import core
from plugins import hftrainer
from plugins.unsloth import translate

HERE = Path(__file__).parent


@dataclass
class UnslothConfig(core.BackendConfig):
    """Config node ``backend=unsloth``. ``native`` keys go straight into the TRL *Config Unsloth patches
    (SFTConfig, DPOConfig, ORPOConfig), after the translation."""

    name: str = "unsloth"
    """Backend name."""
    dataset_num_proc: int = core.number(1, ge=1)
    """Processes the patched TRL trainer uses to prepare datasets."""


class UnslothBackend(core.Trainer):
    """Unsloth 2026.10.9 (FastLanguageModel + its patched TRL 1.15 trainers), one NVIDIA GPU."""

    name: ClassVar[str] = "unsloth"
    config_class: ClassVar[type] = UnslothConfig
    engine_distribution: ClassVar[str] = "unsloth"
    install_hint: ClassVar[str] = "python -m core.envs create unsloth"
    description: ClassVar[str] = "Unsloth 2026.10.9 + its TRL 1.15, in an environment of its own; NVIDIA GPU only"
    memory: ClassVar[core.MemoryProfile] = core.MemoryProfile(  # its fused loss holds no logits
        activations=0.777, logits=0.0, fp32_adapter=True, fp32_master=True, offload_checkpoints=True,
        source="Unsloth profile, fitted on its H200 1B LoRA peak (core/assets/measured.json)")
    environment: ClassVar[list[str]] = core.extra_requirements("anytune", "unsloth")
    """The engine's environment: anytune's ``[unsloth]`` extra (Unsloth's own pins: transformers <= 5.17.0,
    trl <= 1.15.0, datasets < 5)."""
    capabilities: ClassVar[core.Capabilities] = core.Capabilities(
        supports={
            "model.dtype": frozenset({"auto", "bfloat16", "float16"}),
            "method.name": frozenset({"sft", "dpo", "orpo"}),
            "peft.type": frozenset({"none", "lora", "dora", "qlora"}),
            "data.kind": frozenset({"messages", "prompt_completion", "preference", "text"}),
            "train.device": frozenset({"cuda"}),  # Unsloth loads no model without an NVIDIA GPU
            "train.precision": frozenset({"bf16", "fp16"}),
            "train.optimizer": frozenset(hftrainer.OPTIMIZERS),
            "train.lr_scheduler": frozenset(hftrainer.SCHEDULERS),
            "method.loss_type": frozenset({"sigmoid", "ipo", "hinge"}),
            "method.packing": frozenset({False, True}),
            "method.completion_only_loss": frozenset({False, True}),
            "train.gradient_checkpointing": frozenset({False, True}),
            "data.eval": frozenset({False, True}),
            "train.shuffle": frozenset({True, False}),
            "train.save_artifacts": frozenset({True, False}),
        },
        # model.trust_remote_code: only its default (false); Unsloth patches known architectures
        reads=core.fields("*", exclude=("model.trust_remote_code", "train.devices", "train.nodes",
                                               "train.strategy")),
        needs=frozenset({"tokenizer", "template", "weights", "device"}),
    )

    def check(self) -> None:
        """LoRA targets Unsloth can patch, and a dtype that fits the training precision."""
        translate.check(self.job)

    def plan(self, ctx: core.Context) -> core.Plan:
        """Write ``plan/unsloth_args.json``; ship the worker with the run protocol, loss masks and HF glue."""
        spec = translate.native_spec(ctx.job, ctx.data, ctx.rel)
        files = [ctx.write_json("unsloth_args.json", spec),
                 *ctx.ship(HERE / "worker.py", rename={"worker.py": "unsloth_worker.py"}),
                 *hftrainer.ship(ctx)]
        return core.Plan(command=[self.python(), files[1], files[0]], env=dict(translate.QUIET), files=files)
