"""The torchtune backend class and its config node."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from omegaconf import OmegaConf

import core
from plugins.torchtune import translate
from plugins.torchtune.migrate import from_torchtune

HERE = Path(__file__).parent


@dataclass
class TorchtuneConfig(core.BackendConfig):
    """Config node ``backend=torchtune``. ``native`` keys are merged into the recipe config (``plan/torchtune.yaml``)."""

    name: str = "torchtune"
    """Backend name."""
    compile: bool = False
    """torch.compile the model and loss (the recipe's ``compile``)."""


class TorchtuneBackend(core.Trainer):
    """torchtune 0.6.1: native PyTorch recipes configured by YAML, run by ``tune run``."""

    name: ClassVar[str] = "torchtune"
    config_class: ClassVar[type] = TorchtuneConfig
    engine_distribution: ClassVar[str] = "torchtune"
    install_hint: ClassVar[str] = "python -m core.envs create torchtune"
    description: ClassVar[str] = "torchtune 0.6.1 recipes (tune run), in an environment of its own"
    memory: ClassVar[core.MemoryProfile] = core.MemoryProfile(  # all bf16; chunked loss keeps fp32 log-probabilities
        activations=1.211, logits=6.0, fp32_adapter=False, fp32_master=False,
        source="torchtune profile, fitted on its H200 1B LoRA peak (core/assets/measured.json)")
    migrate = staticmethod(from_torchtune)
    environment: ClassVar[list[str]] = core.extra_requirements("anytune", "torchtune")
    """The engine's environment: anytune's ``[torchtune]`` extra, as tested (torchao must stay below 0.17)."""
    capabilities: ClassVar[core.Capabilities] = core.Capabilities(
        supports={
            # auto, or the training precision's dtype (check() refuses the others): torchtune trains in one dtype
            "model.dtype": frozenset({"auto", "float32", "bfloat16"}),
            "model.trust_remote_code": frozenset({False}),  # torchtune's builders run no model repository code
            "method.name": frozenset({"sft", "dpo"}),
            "train.shuffle": frozenset({True, False}),
            "peft.type": frozenset({"none", "lora", "dora", "qlora"}),
            "data.kind": frozenset({"messages", "prompt_completion", "preference", "text"}),
            "train.device": frozenset({"cpu", "cuda"}),
            "train.precision": frozenset({"fp32", "bf16"}),
            "train.optimizer": frozenset({"adamw", "sgd"}),
            "train.lr_scheduler": frozenset({"linear", "cosine", "constant", "constant_with_warmup"}),
            "method.loss_type": frozenset({"sigmoid", "hinge"}),
            "method.packing": frozenset({False, True}),
            "method.completion_only_loss": frozenset({True, False}),
            "train.gradient_checkpointing": frozenset({False, True}),
            "train.save_artifacts": frozenset({True, False}),
            "data.eval": frozenset({False}),  # the single-device recipes of 0.6.1 have no validation loop
            # several processes: full_finetune_distributed, FSDP2 (fully_shard) for both: fsdp reshards the
            # parameters after forward (full shard), ddp keeps them whole until backward (torchtune has no DDP
            # wrapper; both train the same weights as DDP); one process: nothing to shard. No DeepSpeed in torchtune
            "train.strategy": frozenset({"ddp", "fsdp"}),
        },
        # train.eval_steps: no eval data, no evaluation; model.trust_remote_code: never true (above)
        reads=core.fields("model.name_or_path", "model.dtype", "data.chat_template", "method.*", "peft.*",
                          "train.*", exclude=("train.eval_steps",)),
        needs=frozenset({"tokenizer", "template", "weights", "device"}),
        requires={"peft.type=qlora": "cuda"},
    )

    def check(self) -> None:
        """Model family, LoRA targets, method/PEFT combinations and dtype, before any data is read."""
        translate.check(self.job)

    def plan(self, ctx: core.Context) -> core.Plan:
        """Write ``plan/torchtune.yaml``; ship the components as ``plan/anytune_torchtune.py`` with the run
        protocol, the loss masks and the chat renderer they import."""
        config_file = ctx.rel(ctx.plan_dir / translate.PLAN_FILE)
        components = ctx.rel(ctx.plan_dir / translate.COMPONENTS)
        module = components[: -len(".py")].replace("/", ".")
        recipe, config = translate.native_config(ctx.job, ctx.data, ctx.rel, module, ctx.resume)
        header = (f"# torchtune {self.environment_version()} recipe config written by anytune.\n"
                  f"# Run it from the run directory (the folder holding plan/ and data/):\n"
                  f"#   tune run {' '.join([*core.torchrun_args(ctx.job, joined=False), recipe])} --config {config_file}\n"
                  f"# Components named {module}.* are in {components} (tokenizer with\n"
                  f"# the chat template of record, datasets over data/*.jsonl, optimiser, schedule, metric logger\n"
                  f"# that writes metrics.jsonl, artifacts/ and the outcome file).\n")
        files = [ctx.write(translate.PLAN_FILE, header + OmegaConf.to_yaml(OmegaConf.create(config))),
                 *ctx.ship(HERE / "components.py", rename={"components.py": translate.COMPONENTS}),
                 *ctx.ship(core.runproto, core.lossmask, core.chatrender)]
        return core.Plan(command=[self.python(), "-m", "torchtune._cli.tune", "run",
                                  *core.torchrun_args(ctx.job, joined=False), recipe, "--config", files[0]],
                         files=files)

    def environment_version(self) -> str:
        """The pinned torchtune version."""
        return next((r.split("==", 1)[1] for r in self.environment if r.startswith("torchtune==")), "")
