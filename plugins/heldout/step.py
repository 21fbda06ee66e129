"""The held-out evaluator class and its config node."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import core
from core import scores
from plugins import hftrainer

HERE = Path(__file__).parent


def weights(ctx: core.Context, label: str) -> dict:
    """How an evaluator's worker loads the trained model (``heldout_worker.py``'s loader, shared by every local
    evaluator): base, adapter or full model, 4-bit base, remote code, the dtype it is scored in (model.dtype, or
    for auto the training precision's) and the device.

    :param label: the evaluator's name, for the message.
    :raises ConfigError: the run left no weights.
    """
    job = ctx.job
    adapter, model = ctx.local("adapter"), ctx.local("model")
    if adapter is None and model is None:
        raise core.ConfigError(f"eval=[{label}] needs the trained weights (artifacts/adapter or artifacts/model);"
                               f" this run left none (artefacts: {sorted(ctx.artifacts) or 'none'})")
    dtype = job.model.dtype if job.model.dtype != "auto" else hftrainer.DTYPES.get(job.train.precision, "float32")
    return {"base": str(job.model.name_or_path),
            "adapter": ctx.rel(adapter) if adapter is not None else None,
            "model": ctx.rel(model) if adapter is None and model is not None else None,
            "load_in_4bit": job.peft.type == "qlora", "trust_remote_code": bool(job.model.trust_remote_code),
            "dtype": dtype, "device": job.train.device}


@dataclass
class HeldoutConfig(core.StepConfig):
    """Config node ``eval=[heldout]`` (fields: ``eval.heldout.<field>=...``)."""

    name: str = "heldout"
    """Evaluator name."""
    batch_size: int = core.number(8, ge=1)
    """Examples per forward pass (right-padded with an attention mask; the loss is the same for any size)."""
    max_rows: Optional[int] = core.number(None, ge=1)
    """Score only the first N held-out rows (null: all)."""


class HeldoutEvaluator(core.Evaluator):
    """Mean loss over loss tokens on the held-out data, computed by one engine-neutral scorer for every
    engine's artefact (an adapter on its base, or a full model): the template of record, the same loss
    masks every engine trains with (``lossmask``), labels shifted as Hugging Face models do.
    Scores (``core.scores``' schema): loss and perplexity, n = loss tokens."""

    name: ClassVar[str] = "heldout"
    config_class: ClassVar[type] = HeldoutConfig
    engine_distribution: ClassVar[str] = "peft"
    install_hint: ClassVar[str] = "pip install 'anytune[trl]' (or: pip install torch transformers peft)"
    description: ClassVar[str] = "Held-out loss and perplexity on data/eval.jsonl, the same scorer for every engine"
    capabilities: ClassVar[core.Capabilities] = core.Capabilities(
        supports={"data.kind": frozenset({"messages", "prompt_completion", "text"})},
        needs=frozenset({"weights", "tokenizer", "template", "heldout"}),
    )

    def plan(self, ctx: core.Context) -> core.Plan:
        """Write ``heldout.json`` (what to score, how) and ship the scorer with the run protocol and loss masks."""
        job = ctx.job
        if ctx.data.eval is None:
            raise core.ConfigError(f"eval=[heldout] needs held-out data and {ctx.data.dir} has no eval.jsonl "
                                   "(set data.eval or data.eval_fraction when training)")
        if ctx.data.kind == "messages" and ctx.data.template is None:
            raise core.ConfigError(f"eval=[heldout] scores conversations with the chat template of record, and "
                                   f"{ctx.data.dir} has no chat_template.jinja")
        spec = {
            **weights(ctx, "heldout"),
            "eval": ctx.rel(ctx.data.eval),
            "template": ctx.rel(ctx.data.template) if ctx.data.template is not None else None,
            "kind": ctx.data.kind,
            "completion_only": bool(job.method.completion_only_loss),
            "max_length": int(job.train.max_length),
            "batch_size": int(self.config.batch_size),
            "max_rows": self.config.max_rows,
        }
        files = [ctx.write_json("heldout.json", spec),
                 *ctx.ship(HERE / "worker.py", rename={"worker.py": "heldout_worker.py"}),
                 *hftrainer.ship(ctx), *ctx.ship(scores)]
        return core.Plan(command=[self.python(), files[1], files[0]], files=files)
