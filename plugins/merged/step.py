"""The merged-model exporter class and its config node."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import core
from plugins import hftrainer

HERE = Path(__file__).parent
DTYPES = ("auto", "float32", "bfloat16", "float16")
OUT = f"{core.runproto.ARTIFACTS}/merged"
"""Where the merged model goes, relative to the run directory."""


@dataclass
class MergedConfig(core.StepConfig):
    """Config node ``export=[merged]`` (fields: ``export.merged.<field>=...``)."""

    name: str = "merged"
    """Exporter name."""
    dtype: str = core.choice("auto", *DTYPES)
    """Dtype of the saved weights; auto: the base model's own dtype (its config.json)."""


class MergedExporter(core.Exporter):
    """Merges the trained adapter into the base weights (peft's merge_and_unload) and saves a plain
    Hugging Face model in ``artifacts/merged``: safetensors, tokenizer and the chat template of record.
    A full fine-tune's model is re-saved the same way (in the chosen dtype)."""

    name: ClassVar[str] = "merged"
    config_class: ClassVar[type] = MergedConfig
    engine_distribution: ClassVar[str] = "peft"
    install_hint: ClassVar[str] = "pip install 'anytune[trl]' (or: pip install torch transformers peft)"
    description: ClassVar[str] = "Adapter merged into the base weights: a plain transformers model (safetensors)"
    capabilities: ClassVar[core.Capabilities] = core.Capabilities(needs=frozenset({"weights"}))

    def plan(self, ctx: core.Context) -> core.Plan:
        """Write ``merged.json`` (what to merge, where) and ship the worker with the run protocol."""
        adapter, model = ctx.local("adapter"), ctx.local("model")
        if adapter is None and model is None:
            raise core.ConfigError(f"export=[merged] needs the trained weights (artifacts/adapter or "
                                   f"artifacts/model); this run left none (artefacts: {sorted(ctx.artifacts) or 'none'})")
        spec = {
            "base": str(ctx.job.model.name_or_path),
            "adapter": ctx.rel(adapter) if adapter is not None else None,
            "model": ctx.rel(model) if adapter is None and model is not None else None,
            "template": ctx.rel(ctx.data.template) if ctx.data.template is not None else None,
            "dtype": self.config.dtype,
            "trust_remote_code": bool(ctx.job.model.trust_remote_code),
            "out": OUT,
        }
        files = [ctx.write_json("merged.json", spec),
                 *ctx.ship(HERE / "worker.py", rename={"worker.py": "merged_worker.py"}),
                 *hftrainer.ship(ctx)]
        return core.Plan(command=[self.python(), files[1], files[0]], files=files)
