"""The lm-evaluation-harness evaluator class and its config node."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, List, Optional

import core
from core import scores
from plugins import hftrainer
from plugins.heldout.step import HERE as HELDOUT, weights

HERE = Path(__file__).parent


@dataclass
class LmEvalConfig(core.StepConfig):
    """Config node ``eval=[lm_eval]`` (fields: ``eval.lm_eval.<field>=...``)."""

    name: str = "lm_eval"
    """Evaluator name."""
    tasks: List[str] = field(default_factory=list)
    """Harness task names (``[hellaswag]``), or paths of task YAML files, which are registered first."""
    include_path: Optional[str] = None
    """A folder of task YAMLs to register (offline tasks: ``dataset_path: json`` with ``data_files``)."""
    num_fewshot: Optional[int] = core.number(None, ge=0)
    """Few-shot examples per prompt; null: each task's own default."""
    limit: Optional[int] = core.number(None, ge=1)
    """Score only the first N documents of each task (null: all)."""
    batch_size: int = core.number(8, ge=1)
    """Requests per forward pass."""
    chat_template: bool = False
    """Format each request with the chat template of record (the harness's ``apply_chat_template``)."""


class LmEvalEvaluator(core.Evaluator):
    """Runs lm-evaluation-harness (``simple_evaluate``) on the trained model: the adapter on its base, loaded by
    anytune and handed to the harness's ``HFLM`` (so the harness never resizes embeddings before the adapter), with
    the tokenizer and template of record. Every task's metrics go to ``eval.json`` as ``<task>/<metric>`` with the
    harness's stderr, n (documents scored) and version. Runs in an environment of its own."""

    name: ClassVar[str] = "lm_eval"
    config_class: ClassVar[type] = LmEvalConfig
    engine_distribution: ClassVar[str] = "lm-eval"
    install_hint: ClassVar[str] = "python -m core.envs create lm_eval"
    description: ClassVar[str] = "EleutherAI lm-evaluation-harness tasks (simple_evaluate), in an environment of its own"
    environment: ClassVar[list[str]] = core.extra_requirements("anytune", "lm-eval")
    """The harness's environment: anytune's ``[lm-eval]`` extra, as tested."""
    capabilities: ClassVar[core.Capabilities] = core.Capabilities(needs=frozenset({"weights", "tokenizer"}))

    def task_files(self) -> list[Path]:
        """Tasks given as YAML files."""
        return [Path(t).expanduser() for t in self.config.tasks if str(t).endswith((".yaml", ".yml"))]

    def check(self) -> None:
        """Some task is named; task files and the include folder exist."""
        if not self.config.tasks:
            raise core.ConfigError("eval=[lm_eval] needs tasks: eval.lm_eval.tasks=[hellaswag] (names the harness "
                                   "knows, or task YAML files)")
        for path in self.task_files():
            if not path.is_file():
                raise core.ConfigError(f"eval.lm_eval.tasks: {path}: no such file")
        if self.config.include_path and not Path(self.config.include_path).expanduser().is_dir():
            raise core.ConfigError(f"eval.lm_eval.include_path={self.config.include_path}: no such folder")

    def plan(self, ctx: core.Context) -> core.Plan:
        """Write ``lm_eval.json`` and ship the worker with the model loader it shares with heldout."""
        job, c = ctx.job, self.config
        spec = {
            **weights(ctx, "lm_eval"),
            "template": ctx.rel(ctx.data.template) if ctx.data.template is not None else None,
            "tasks": [str(Path(t).expanduser().resolve()) if str(t).endswith((".yaml", ".yml")) else str(t)
                      for t in c.tasks],
            "include_path": str(Path(c.include_path).expanduser().resolve()) if c.include_path else None,
            "num_fewshot": c.num_fewshot, "limit": c.limit, "batch_size": int(c.batch_size),
            "chat_template": bool(c.chat_template), "seed": int(job.train.seed),
            "out": f"{core.runproto.ARTIFACTS}/eval/lm_eval.json",
        }
        files = [ctx.write_json("lm_eval.json", spec),
                 *ctx.ship(HERE / "worker.py", rename={"worker.py": "lm_eval_worker.py"}),
                 *ctx.ship(HELDOUT / "worker.py", rename={"worker.py": "heldout_worker.py"}),
                 *hftrainer.ship(ctx), *ctx.ship(scores)]
        return core.Plan(command=[self.python(), files[1], files[0]], files=files,
                         env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"} if job.get("offline") else {})
