"""The TRL backend class and its config node."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import core
from plugins import hftrainer
from plugins.hftrainer.memory import PEFT
from plugins.trl import translate

HERE = Path(__file__).parent


@dataclass
class TrlConfig(core.BackendConfig):
    """Config node ``backend=trl``. ``native`` keys go straight into the TRL *Config (SFTConfig, DPOConfig, ORPOConfig)."""

    name: str = "trl"
    """Backend name."""
    dataset_num_proc: int = 1
    """Processes TRL uses to tokenise datasets."""


class TrlBackend(core.Trainer):
    """Hugging Face TRL (SFTTrainer, DPOTrainer, KTOTrainer, experimental ORPOTrainer) with peft."""

    name: ClassVar[str] = "trl"
    config_class: ClassVar[type] = TrlConfig
    engine_distribution: ClassVar[str] = "trl"
    install_hint: ClassVar[str] = "pip install 'anytune[trl]'"
    description: ClassVar[str] = "Hugging Face TRL 1.16 + peft; the reference backend"
    memory: ClassVar[core.MemoryProfile] = PEFT
    capabilities: ClassVar[core.Capabilities] = core.Capabilities(
        supports={
            "model.dtype": frozenset({"auto", "float32", "bfloat16", "float16"}),
            "model.trust_remote_code": frozenset({False, True}),
            "method.name": frozenset({"sft", "dpo", "orpo", "kto"}),
            "peft.type": frozenset({"none", "lora", "dora", "qlora"}),
            "data.kind": frozenset({"messages", "prompt_completion", "preference", "unpaired", "text"}),
            "train.device": frozenset({"cpu", "cuda"}),
            "train.precision": frozenset({"fp32", "bf16", "fp16"}),
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
        reads=core.fields("*"),
        needs=frozenset({"tokenizer", "template", "weights", "device"}),
        requires={"peft.type=qlora": "cuda"},
    )

    def check(self) -> None:
        """KTO's KL term pairs each row with its neighbours in a batch: TRL's KTOTrainer needs at least 2 rows a
        batch, read in order."""
        t = self.job.train
        if self.job.method.name == "kto" and t.batch_size < 2:
            raise core.ConfigError(f"method.name=kto on TRL needs train.batch_size of at least 2 (its KL estimate "
                                   f"pairs rows within a batch); got {t.batch_size}")
        if self.job.method.name == "kto" and t.shuffle:
            raise core.ConfigError("method.name=kto on TRL reads rows in file order (KTOTrainer's KL estimate needs "
                                   "sequential sampling): set train.shuffle=false, and shuffle the file if needed")

    def plan(self, ctx: core.Context) -> core.Plan:
        """Write ``plan/trl_args.json`` and ship the worker with the run protocol, loss masks and HF glue."""
        spec = translate.native_spec(ctx.job, ctx.data, ctx.rel, ctx.resume)
        files = [ctx.write_json("trl_args.json", spec),
                 *ctx.ship(HERE / "worker.py", rename={"worker.py": "trl_worker.py"}),
                 *hftrainer.ship(ctx)]
        return core.Plan(command=hftrainer.command(ctx.job, self.python(), [files[1], files[0]]),
                         env={"TRL_EXPERIMENTAL_SILENCE": "1"} if spec["method"] == "orpo" else {}, files=files)
