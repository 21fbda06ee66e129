"""Translation of the canonical job into TRL's native arguments (``plan/trl_args.json``)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import OmegaConf

import core
from core import hftrainer, workerlib
from core.errors import ConfigError

HERE = Path(__file__).parent



class TrlBackend(core.Backend):
    """Hugging Face TRL (SFTTrainer, DPOTrainer, experimental ORPOTrainer) with peft."""

    name: ClassVar[str] = "trl"
    engine_distribution: ClassVar[str] = "trl"
    install_hint: ClassVar[str] = "pip install 'anytune[trl]'"
    description: ClassVar[str] = "Hugging Face TRL 1.16 + peft; the reference backend"
    capabilities: ClassVar[core.Capabilities] = core.Capabilities(
        supports={
            "method.name": frozenset({"sft", "dpo", "orpo"}),
            "peft.type": frozenset({"none", "lora", "dora", "qlora"}),
            "data.kind": frozenset({"messages", "prompt_completion", "preference", "text"}),
            "train.device": frozenset({"cpu", "cuda"}),
            "train.precision": frozenset({"fp32", "bf16", "fp16"}),
            "train.optimizer": frozenset({"adamw", "sgd"}),
            "train.lr_scheduler": frozenset(hftrainer.SCHEDULERS),
            "method.loss_type": frozenset({"sigmoid", "ipo", "hinge"}),
            "method.packing": frozenset({False, True}),
            "method.completion_only_loss": frozenset({False, True}),
            "train.gradient_checkpointing": frozenset({False, True}),
            "data.eval": frozenset({False, True}),
            "train.shuffle": frozenset({True, False}),
        },
        requires={"peft.type=qlora": "cuda"},
    )

    def plan(self, run_dir: Path) -> core.Plan:
        """Write ``plan/trl_args.json`` and copy the worker beside it."""
        plan_dir = run_dir / "plan"
        plan_dir.mkdir(parents=True, exist_ok=True)
        stats = workerlib.read_json(str(run_dir / "data" / "stats.json"))
        spec = self.native_spec(stats)
        (plan_dir / "trl_args.json").write_text(json.dumps(spec, indent=2))
        shutil.copy(HERE / "worker.py", plan_dir / "trl_worker.py")
        shutil.copy(workerlib.__file__, plan_dir / "workerlib.py")
        return core.Plan(command=[self.python(), "plan/trl_worker.py", "plan/trl_args.json"],
                         env={"TRL_EXPERIMENTAL_SILENCE": "1"} if spec["method"] == "orpo" else {},
                         files=["plan/trl_args.json", "plan/trl_worker.py", "plan/workerlib.py"])

    def native_spec(self, stats: dict[str, Any]) -> dict[str, Any]:
        """The whole job in TRL's terms: model loading, peft.LoraConfig kwargs, *Config kwargs.

        :param stats: ``data/stats.json`` of the prepared data (its kind and row counts).
        """
        j = self.job
        has_eval = bool(stats.get("rows", {}).get("eval"))
        t, m, p = j.train, j.method, j.peft
        args = hftrainer.training_args(j, has_eval)
        args["max_length"] = t.max_length
        if m.name == "sft":
            args.update(packing=m.packing, completion_only_loss=m.completion_only_loss,
                        dataset_num_proc=j.backend.get("dataset_num_proc", 1))
        elif m.name == "dpo":
            args.update(beta=m.beta, loss_type=[m.loss_type])
        elif m.name == "orpo":
            args.update(beta=m.beta)
        args.update(OmegaConf.to_container(j.backend.native, resolve=True) if j.backend.native else {})
        peft = hftrainer.lora_kwargs(p)
        dtype = hftrainer.load_dtype(j)
        return {
            "method": m.name,
            "kind": stats["kind"],
            "model": {"name_or_path": j.model.name_or_path, "dtype": dtype,
                      "trust_remote_code": j.model.trust_remote_code,
                      "load_in_4bit": p.type == "qlora"},
            "peft": peft,
            "data": {"train": "data/train.jsonl",
                     "eval": "data/eval.jsonl" if has_eval else None,
                     "chat_template": "data/chat_template.jinja"},
            "args": args,
            "offline": bool(j.offline),
            "save": bool(t.save_artifacts),
        }

    def check(self) -> None:
        """TRL-specific checks beyond the capability table."""
        if self.job.method.name != "sft" and self.job.method.packing:
            raise ConfigError("method.packing=true applies to method.name=sft only")
