"""The backend conformance suite: the same small jobs on every backend (ibis's shared suite is the model).

A backend joins by being installed: ``tests/test_conformance.py`` parametrises
``BackendConformance`` over every registered backend whose engine is present. A
third-party package reuses it with one subclass that defines a ``backend``
fixture returning its backend's name. What a backend's capability table lacks is
marked ``notimpl`` and asserted to be refused at validation, never skipped.

Only tests import this module (it imports pytest; torch, transformers and peft lazily).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig

from core import lossmask, runproto

#: Overrides that make every conformance job small, offline and CPU-friendly.
SMALL = ["offline=true", "train.device=cpu", "train.precision=fp32", "train.max_steps=8",
         "data.max_rows=32", "data.eval_fraction=0", "train.learning_rate=5e-3", "train.max_length=512",
         "train.batch_size=4"]

#: The jobs every backend runs: name -> overrides on top of SMALL.
JOBS: dict[str, list[str]] = {
    "sft_lora": ["method=sft", "peft=lora"],
    "sft_dora": ["method=sft", "peft=dora"],
    "sft_full": ["method=sft", "peft=none", "train.learning_rate=1e-3"],
    "sft_packing": ["method=sft", "peft=lora", "method.packing=true"],
    "dpo": ["method=dpo", "data=demo_pref", "peft=lora", "data.max_rows=16"],
    "orpo": ["method=orpo", "data=demo_pref", "peft=lora", "data.max_rows=16"],
}


def compose(overrides: list[str]) -> DictConfig:
    """The job Hydra would compose for ``python -m core <overrides>``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from core import config, plugins

    plugins.registry()
    config.register()
    with initialize_config_module("conf", version_base="1.3"):
        return hydra_compose("config", overrides=config.open_mappings(list(overrides)))


def unsupported(cfg: DictConfig, backend: str) -> list[str]:
    """Features of ``cfg`` that ``backend``'s capability table refuses (as field=value), as validation sees them."""
    from core import data, plugins
    from core.checks import check_capabilities, resolve_auto
    from core.errors import UnsupportedFeature

    reg = plugins.registry()
    resolve_auto(cfg)
    try:
        check_capabilities(cfg, reg.backend(backend), reg.backends, data.detect_kind(cfg.data))
    except UnsupportedFeature as exc:
        return [f"{exc.field}={exc.value}"]
    return []


def load_artifact(run_dir: Path, result: dict[str, Any]):
    """Load what a run saved (adapter on its base, or full model) with transformers/peft."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arts = result["artifacts"]
    if "adapter" in arts:
        from peft import AutoPeftModelForCausalLM

        path = run_dir / arts["adapter"]["path"]
        return AutoPeftModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    path = run_dir / arts["model"]["path"]
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def generates(model, tokenizer) -> bool:
    """True if the model produces new tokens for a chat prompt."""
    import torch

    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    return out.shape[1] > ids["input_ids"].shape[1]


def reference_loss(model_path: str, data_dir: Path, max_length: int, completion_only: bool = True,
                   rows: int | None = None) -> float:
    """Step-1 SFT loss computed with plain transformers: mean over loss tokens of the data set
    (or of its first ``rows`` records).

    Uses the run's normalised records and chat template of record, one unpadded
    forward per example, labels shifted as Hugging Face models do.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    tok.chat_template = (data_dir / "chat_template.jinja").read_text()
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    kind = runproto.read_json(str(data_dir / "stats.json"))["kind"]
    records = runproto.read_jsonl(str(data_dir / "train.jsonl"))[:rows]
    total, count = 0.0, 0
    for row in lossmask.tokenize_records(records, tok, kind, completion_only, max_length):
        ids, mask = torch.tensor(row["input_ids"]), torch.tensor(row["completion_mask"])
        labels = torch.where(mask.bool(), ids, torch.tensor(-100))
        with torch.no_grad():
            logits = model(ids[None]).logits[0, :-1].float()
        target = labels[1:]
        total += torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum").item()
        count += int((target != -100).sum())
    return total / count


def reference_trainable(model_path: str, peft: DictConfig) -> int:
    """Trainable parameters of the reference setup: peft's LoRA on the base, or every weight."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path)
    if peft.type != "none":
        from peft import LoraConfig, get_peft_model

        targets = list(peft.target_modules)
        model = get_peft_model(model, LoraConfig(
            r=peft.r, lora_alpha=peft.alpha, use_dora=peft.type == "dora",
            target_modules="all-linear" if targets == ["all-linear"] else targets))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class BackendConformance:
    """Every backend runs these. Subclasses provide a ``backend`` fixture (the backend's name)."""

    def run_job(self, backend: str, overrides: list[str], tmp_path: Path):
        from core import runner

        cfg = compose([f"backend={backend}", *SMALL, *overrides])
        run_dir = tmp_path / "run"
        return cfg, run_dir, runner.run(cfg, run_dir)

    def check_refused(self, backend, overrides, tmp_path, missing):
        _, _, result = self.run_job(backend, overrides, tmp_path)
        assert result["status"] == "failed", result
        assert result["error_type"] == "UnsupportedFeature", result
        pytest.xfail(f"notimpl: {backend} lacks {', '.join(missing)} (refused at validation)")

    @pytest.mark.parametrize("job", list(JOBS))
    def test_job(self, backend: str, job: str, tmp_path: Path):
        """Loss falls, the artefact loads back and generates; unsupported jobs are refused."""
        overrides = JOBS[job]
        missing = unsupported(compose([f"backend={backend}", *SMALL, *overrides]), backend)
        if missing:
            return self.check_refused(backend, overrides, tmp_path, missing)
        cfg, run_dir, result = self.run_job(backend, overrides, tmp_path)
        assert result["status"] == "succeeded", result.get("error")
        rows = runproto.read_jsonl(str(run_dir / "metrics.jsonl"))
        assert set().union(*rows) <= set(runproto.METRICS), "metrics outside the schema"
        losses = [r["loss"] for r in rows if "loss" in r]
        assert len(losses) >= 4
        assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, f"loss did not fall: {losses}"
        model, tok = load_artifact(run_dir, result)
        assert generates(model, tok)

    def test_parity_step1(self, backend: str, tmp_path: Path):
        """From identical weights and the same first batch, step-1 loss matches plain transformers."""
        overrides = ["method=sft", "peft=lora", "data.max_rows=8", "train.batch_size=8", "train.max_steps=1",
                     "train.save_artifacts=false"]
        cfg, run_dir, result = self.run_job(backend, overrides, tmp_path)
        assert result["status"] == "succeeded", result.get("error")
        step1 = next(r["loss"] for r in runproto.read_jsonl(str(run_dir / "metrics.jsonl")) if "loss" in r)
        ref = reference_loss(cfg.model.name_or_path, run_dir / "data", cfg.train.max_length)
        assert abs(step1 - ref) < 1e-3, (step1, ref)
        assert result["trainable_parameters"] == reference_trainable(cfg.model.name_or_path, cfg.peft)

    def test_sequential_order(self, backend: str, tmp_path: Path):
        """With train.shuffle=false the first batch is the first rows of data/train.jsonl, on every engine."""
        overrides = ["method=sft", "peft=lora", "data.max_rows=12", "train.batch_size=4", "train.max_steps=1",
                     "train.shuffle=false", "train.save_artifacts=false"]
        missing = unsupported(compose([f"backend={backend}", *SMALL, *overrides]), backend)
        if missing:
            return self.check_refused(backend, overrides, tmp_path, missing)
        cfg, run_dir, result = self.run_job(backend, overrides, tmp_path)
        assert result["status"] == "succeeded", result.get("error")
        step1 = next(r["loss"] for r in runproto.read_jsonl(str(run_dir / "metrics.jsonl")) if "loss" in r)
        first = reference_loss(cfg.model.name_or_path, run_dir / "data", cfg.train.max_length, rows=4)
        later = reference_loss(cfg.model.name_or_path, run_dir / "data", cfg.train.max_length)
        assert abs(step1 - first) < 1e-3 and abs(first - later) > 1e-3, (step1, first, later)
