"""How the conformance suite reads the ``hf`` backend's effective configuration (test side).

``HfFields`` gives :class:`core.conformance.fields.FieldsReachEngine` its ``FIELD_MAP`` and
``effective_config``: the ``transformers.TrainingArguments`` the plan's worker builds (through the
plan's own ``hfglue.config_args``, after ``__post_init__``), peft's ``LoraConfig``, the model's loading
kwargs, the tokenizer with the template of record, and how the worker tokenises. A backend's
conformance class mixes it in::

    class TestHf(HfFields, BackendConformance): ...
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
from pathlib import Path
from typing import Any, Mapping

from core.conformance.fields import TRAINER_FIELD_MAP, FieldsReachEngine, at, constant, load_plan_module


class HfFields(FieldsReachEngine):
    """``hf``: plain ``transformers.Trainer`` over rows the worker tokenises itself (SFT only, never packed)."""

    FIELD_MAP = {
        **TRAINER_FIELD_MAP,
        "method.name": constant("sft", "the worker trains a causal LM on tokenised SFT rows"),
        "method.completion_only_loss": at("completion_only"),
        "method.packing": constant(False, "the worker pads each batch and never packs"),
        "train.max_length": at("max_length"),
    }

    def effective_config(self, run_dir: Path) -> Mapping[str, Any]:
        """What ``plan/hf_worker.py`` builds its Trainer from, built as it builds it, in the run directory."""
        import torch
        from peft import LoraConfig
        from transformers import Trainer, TrainingArguments

        hfglue = load_plan_module(run_dir / "plan" / "hfglue.py", "hfglue")
        spec = json.loads((run_dir / "plan" / "hf_args.json").read_text())
        m, tok = spec["model"], spec["tokenize"]
        with contextlib.chdir(run_dir):
            tokenizer = hfglue.load_tokenizer(m["name_or_path"], spec["data"]["chat_template"],
                                              m["trust_remote_code"])
            args = hfglue.config_args(TrainingArguments, spec["args"])
        load = {"dtype": getattr(torch, m["dtype"]), "trust_remote_code": m["trust_remote_code"]}
        if m.get("attn_implementation"):
            load["attn_implementation"] = m["attn_implementation"]
        with open(run_dir / "data" / "train.jsonl", encoding="utf-8") as f:
            rows = sum(1 for line in f if line.strip())
        return {"args": args, "lora": LoraConfig(**spec["peft"]) if spec["peft"] else None, "load": load,
                "model": m["name_or_path"], "tokenizer": tokenizer, "trainer_class": Trainer,
                "kind": spec["kind"], "eval": spec["data"]["eval"], "save": spec["save"], "rows": rows,
                "order": spec.get("order"),
                "completion_only": tok["completion_only_loss"], "max_length": tok["max_length"]}
