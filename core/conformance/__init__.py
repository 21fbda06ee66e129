"""The backend conformance suite, shipped as a pytest plugin (ibis's shared backend suite is the model).

A backend's repository runs the whole suite with one class (anytune's pytest plugin, loaded through
the ``pytest11`` entry point wherever anytune is installed, does the rest)::

    from core.conformance import BackendConformance, notimpl

    class TestMine(BackendConformance, backend="mine"):
        gaps = [notimpl("test_job[dpo]", "test_accepts[method.name=dpo]", reason="SFT only")]

- :mod:`~core.conformance.suite`: the tests (validation against the capability table, training jobs,
  parity with an independent reference) and the helpers they run jobs with;
- :mod:`~core.conformance.fields`: every field a backend reads reaches its engine (a mixin of the suite);
- :mod:`~core.conformance.gaps`: ``notimpl`` / ``notyet`` / ``never``, the declared known gaps;
- :mod:`~core.conformance.reference`: tokens, masks and losses from plain transformers and torch;
- :mod:`~core.conformance.plugin`: parametrisation per backend, markers, options and fixtures;
- :mod:`~core.conformance.jobs`: ``compose`` and the small jobs.

Only tests import this package (it imports pytest; torch, transformers and peft inside functions).
"""
from __future__ import annotations

import importlib
from typing import Any

import pytest

pytest.register_assert_rewrite("core.conformance.suite", "core.conformance.fields", "core.conformance.reference")

_EXPORTS = {"BackendConformance": "suite", "needs": "suite", "Gap": "gaps", "never": "gaps", "notimpl": "gaps",
            "notyet": "gaps", "JOBS": "jobs", "SMALL": "jobs", "compose": "jobs", "load_model": "reference"}
"""Public names -> the module that defines them, imported on first use: the pytest plugin loads this package
in every pytest session, which must not import the suite (or torch) unless a test uses it."""

__all__ = [*_EXPORTS, "load_artifact", "generates", "reference_loss", "reference_trainable"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"core.conformance.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'core.conformance' has no attribute {name!r}")


# -- helpers other test modules use --------------------------------------------------------------------


def load_artifact(run_dir, result):
    """(model, tokenizer) of what a run saved: the adapter on its base, or the full model."""
    from pathlib import Path

    from transformers import AutoTokenizer

    arts = result["artifacts"]
    if "adapter" in arts:
        from peft import AutoPeftModelForCausalLM

        path = Path(run_dir) / arts["adapter"]["path"]
        return AutoPeftModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    path = Path(run_dir) / arts["model"]["path"]
    from core.conformance.reference import load_model

    return load_model(path), AutoTokenizer.from_pretrained(path)


def generates(model, tokenizer) -> bool:
    """True if the model produces new tokens for a chat prompt."""
    import torch

    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    return out.shape[1] > ids["input_ids"].shape[1]


def reference_loss(model_path, data_dir, max_length: int, completion_only: bool = True,
                   rows: int | None = None) -> float:
    """Step-1 SFT loss of a run's (first ``rows``) training records by the independent reference: mean over
    their loss tokens, tokens and masks from plain transformers (``reference.Reference``), not core.lossmask."""
    from pathlib import Path

    from core import runproto
    from core.conformance import reference

    data_dir = Path(data_dir)
    kind = runproto.read_json(str(data_dir / "stats.json"))["kind"]
    records = runproto.read_jsonl(str(data_dir / "train.jsonl"))[:rows]
    ref = reference.Reference(model_path, max_length)
    return reference.token_mean(reference.load_model(model_path),
                                [ref.encode(kind, r, completion_only) for r in records])


def reference_trainable(model_path, peft) -> int:
    """Trainable parameters of the reference setup: peft's LoRA on the base, or every weight."""
    from core.conformance import reference

    return reference.trainable_parameters(model_path, peft)
