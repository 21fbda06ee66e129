"""Translation of the canonical job into the worker's native arguments (``plan/hf_args.json``).

``plan/hf_args.json`` is plain ``transformers.TrainingArguments`` kwargs plus
``peft.LoraConfig`` kwargs and model/data paths: readable and editable, and run by
``plan/hf_worker.py`` without anytune installed (``sh plan/run.sh``).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

import core
from core import hftrainer, workerlib

HERE = Path(__file__).parent



def plan(backend: core.Backend, run_dir: Path) -> core.Plan:
    """Write ``plan/hf_args.json``, copy the worker and ``workerlib`` beside it, return the command."""
    plan_dir = run_dir / "plan"
    plan_dir.mkdir(parents=True, exist_ok=True)
    stats = workerlib.read_json(str(run_dir / "data" / "stats.json"))
    spec = native_spec(backend.job, stats)
    (plan_dir / "hf_args.json").write_text(json.dumps(spec, indent=2))
    shutil.copy(HERE / "worker.py", plan_dir / "hf_worker.py")
    shutil.copy(workerlib.__file__, plan_dir / "workerlib.py")
    return core.Plan(command=[backend.python(), "plan/hf_worker.py", "plan/hf_args.json"],
                     files=["plan/hf_args.json", "plan/hf_worker.py", "plan/workerlib.py"])


def native_spec(job: Any, stats: dict[str, Any]) -> dict[str, Any]:
    """The whole job in transformers/peft terms: model loading, LoraConfig kwargs, TrainingArguments kwargs.

    :param job: the resolved canonical config.
    :param stats: ``data/stats.json`` of the prepared data (its kind and row counts).
    """
    t, m, p, b = job.train, job.method, job.peft, job.backend
    has_eval = bool(stats.get("rows", {}).get("eval"))
    args = hftrainer.training_args(job, has_eval)
    args.update(remove_unused_columns=False, include_num_input_tokens_seen="non_padding")
    args.update(OmegaConf.to_container(b.native, resolve=True) if b.native else {})
    peft, dtype = hftrainer.lora_kwargs(p), hftrainer.load_dtype(job)
    return {
        "kind": stats["kind"],
        "model": {"name_or_path": job.model.name_or_path, "dtype": dtype,
                  "trust_remote_code": job.model.trust_remote_code,
                  "attn_implementation": b.get("attn_implementation") or None},
        "peft": peft,
        "data": {"train": "data/train.jsonl",
                 "eval": "data/eval.jsonl" if has_eval else None,
                 "chat_template": "data/chat_template.jinja"},
        "tokenize": {"max_length": t.max_length, "completion_only_loss": m.completion_only_loss,
                     "pad_to_multiple_of": b.get("pad_to_multiple_of") or None},
        "args": args,
        "offline": bool(job.offline),
        "save": bool(t.save_artifacts),
    }
