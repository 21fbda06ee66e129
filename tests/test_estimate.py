"""``python -m core.estimate`` and the estimate ``plan_only`` prints: LoRA parameters counted exactly, the memory
model within 20 % of every measured peak it claims to cover (read from ``core/assets/measured.json``), time scaled
by 6·N, the OpenAI backend's cost, and a hub id that is not on this machine said so."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from core import estimate, plugins

ASSETS = Path(estimate.MEASURED).parent
TINY = ASSETS / "tiny-llama"
CLI = [sys.executable, "-m", "core.estimate", "--json", "offline=true"]


def job_of(row: dict) -> OmegaConf:
    """The canonical fields a measured row fixes (the rest at the schema's defaults)."""
    return OmegaConf.create({
        "model": {"dtype": "auto"}, "method": {"name": "sft", "packing": row.get("packing", False)},
        "peft": {"type": row["peft"], "r": row.get("r", 16), "target_modules": ["all-linear"]},
        "train": {"precision": row["precision"], "optimizer": "adamw", "devices": 1, "nodes": 1, "strategy": "ddp",
                  "batch_size": row["batch_size"], "max_length": row["max_length"],
                  "gradient_checkpointing": row["gradient_checkpointing"]}})


def peak(row: dict) -> float:
    return row["peak_gib"] * 2**30 if "peak_gib" in row else row["peak_mib"] * 2**20


MEASURED = estimate.measured()
IN_SCOPE = [r for r in MEASURED["memory"] if r["in_scope"]]


@pytest.mark.parametrize("row", IN_SCOPE, ids=[r["id"] for r in IN_SCOPE])
def test_memory_within_20_percent_of_measured(row):
    backend = plugins.registry().backend(row["backend"])
    s = estimate.shape(MEASURED["models"][row["model"]])
    assert s["params"] == MEASURED["models"][row["model"]]["parameters"]
    # the longest row of those runs reaches max_length (packed rows fill it)
    est = estimate.memory(job_of(row), backend.memory, s, {"tokens": {"train": {"max": row["max_length"]}}})
    assert abs(est["total"] / peak(row) - 1) <= 0.20, (est["total"] / 2**30, peak(row) / 2**30)


def test_out_of_scope_rows_say_why():
    assert all(r.get("why") for r in MEASURED["memory"] if not r["in_scope"])
    assert sum(not r.get("fit") for r in IN_SCOPE) >= 7, "most rows covered are not the ones the profiles were fit on"


def test_every_profile_is_fitted_on_its_own_engine():
    """Each local backend's memory profile was fitted on in-scope peaks of its own engine, not borrowed."""
    for name in ("trl", "torchtune", "unsloth", "axolotl"):
        assert plugins.registry().backend(name).memory is not None, name
        assert any(r.get("fit") for r in IN_SCOPE if r["backend"] == name), name


def test_axolotl_with_its_kernels_off_is_the_adapter_input_copy():
    """Axolotl's LoRA kernels off (a native key, out of scope): its profile plus peft's copy of each adapted layer's
    input, and nothing else, is within 20 % of that peak."""
    import dataclasses

    row = next(r for r in MEASURED["memory"] if r["id"] == "h200-axolotl-lora-nokernel")
    assert not row["in_scope"] and row["native"]["lora_mlp_kernel"] is False
    profile = dataclasses.replace(plugins.registry().backend("axolotl").memory, adapter_input_copy=True)
    est = estimate.memory(job_of(row), profile, estimate.shape(MEASURED["models"][row["model"]]),
                          {"tokens": {"train": {"max": row["max_length"]}}})
    assert abs(est["total"] / peak(row) - 1) <= 0.20, (est["total"] / 2**30, peak(row) / 2**30)


@pytest.mark.parametrize("peft_type,targets", [("lora", ["all-linear"]), ("lora", ["q_proj", "v_proj"]),
                                               ("dora", ["o_proj", "down_proj"]), ("lora", ["lm_head", "k_proj"])])
def test_lora_parameters_equal_peft_count(peft_type, targets):
    """The count from config.json equals peft's trainable parameters on the tiny model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=16, use_dora=peft_type == "dora",
                      target_modules="all-linear" if targets == ["all-linear"] else targets)
    wrapped = get_peft_model(model, lora)
    real = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    peft = OmegaConf.create({"type": peft_type, "r": 8, "target_modules": targets})
    assert estimate.lora_params(peft, estimate.shape(json.loads((TINY / "config.json").read_text()))) == real


def test_lora_parameters_of_the_benchmarked_1b():
    peft = OmegaConf.create({"type": "lora", "r": 16, "target_modules": ["all-linear"]})
    assert estimate.lora_params(peft, estimate.shape(MEASURED["models"]["llama-1b-128k"])) == 11_272_192


@pytest.fixture(scope="module")
def llama1b(tmp_path_factory) -> Path:
    """The benchmarked 1B shape as a config.json beside the tiny model's tokenizer (no weights are read)."""
    path = tmp_path_factory.mktemp("llama1b")
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(TINY / f, path / f)
    cfg = {**json.loads((TINY / "config.json").read_text()),
           **{k: v for k, v in MEASURED["models"]["llama-1b-128k"].items() if k not in ("parameters", "note")}}
    cfg["head_dim"] = 64
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def run_cli(*args: str) -> dict:
    p = subprocess.run([*CLI, *args], capture_output=True, text=True, env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_cli_on_the_benchmarked_shape(llama1b):
    """The H200 job's shape through the command: its memory, steps from the data, and time from the table."""
    est = run_cli(f"model.name_or_path={llama1b}", "train.device=cuda", "train.precision=bf16", "method.packing=true",
                  "train.max_length=2048", "train.batch_size=8", "train.max_steps=60")
    assert est["trainable_parameters"] == 11_272_192 and est["model"]["parameters"] == 1_235_814_400
    row = next(r for r in MEASURED["memory"] if r["id"] == "h200-trl-lora-varlen")
    assert abs(est["memory"]["total"] / peak(row) - 1) < 0.20
    assert est["steps"] == 60 and est["training_tokens"] == 60 * 8 * 2048
    assert est["time"]["tokens_per_s"] == 48920 and est["time"]["seconds"] == round(60 * 8 * 2048 / 48920)
    assert "6N ratio" in est["time"]["how"] and "no GPU seen" in est["time"]["how"]
    half = estimate.shape({**MEASURED["models"]["llama-1b-128k"], "num_hidden_layers": 8})
    job = OmegaConf.create({"peft": {"type": "lora"}, "train": {"gradient_checkpointing": False, "devices": 1,
                                                                  "nodes": 1}})
    scaled = estimate.throughput("trl", job, half, "NVIDIA H200")
    assert scaled["tokens_per_s"] == round(48920 * 1_235_814_400 / half["params"])


def test_fits_the_gpu_it_sees(llama1b, monkeypatch):
    """The verdict against the GPU nvidia-smi shows (faked here: this machine has none)."""
    from core import config

    config.register()
    job = config.compose([f"model.name_or_path={llama1b}", "train.device=cuda", "train.precision=bf16",
                          "train.max_steps=5", "train.batch_size=8", "train.max_length=2048", "method.packing=true"])
    trainer = plugins.registry().backend("trl")(job)
    stats = {"rows": {"train": 100}, "tokens": {"train": {"mean": 500.0, "max": 2048, "total": 50_000}}}
    for memory, fits in ((80 * 2**30, True), (24 * 2**30, False)):
        monkeypatch.setattr(estimate, "gpus", lambda m=memory: [{"name": "NVIDIA H100 80GB HBM3", "memory": m}])
        est = estimate.of(job, trainer, stats)
        assert est["memory"]["fits"] is fits and est["memory"]["device"].startswith("NVIDIA H100")
        how = est["time"]["how"]  # the row measured on the GPU it sees comes first
        assert "measured on NVIDIA H100 80GB HBM3" in how and "not scaled" not in how


def test_config_error_exits_2():
    p = subprocess.run([*CLI, "train.learning_rate=-1"], capture_output=True, text=True)
    assert p.returncode == 2 and "learning_rate" in p.stderr


def test_plan_only_prints_the_estimate(tmp_path):
    p = subprocess.run([sys.executable, "-m", "core", "offline=true", "plan_only=true", f"run_dir={tmp_path / 'r'}"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    out = " ".join(p.stdout.split())
    assert out.index("data: messages") < out.index("estimate (trl)") < out.index("Run directory")
    assert "trainable 32,768" in out and "75 optimiser steps" in out
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert result["estimate"]["trainable_parameters"] == 32_768


def test_hub_id_not_on_this_machine_is_said():
    """A hub id whose config.json is not here: the estimate says so and still counts tokens and steps."""
    from core import config

    config.register()
    job = config.compose(["model.name_or_path=someone/absent-model", "train.max_steps=10"])
    trainer = plugins.registry().backend("trl")(job)
    stats = {"rows": {"train": 100}, "tokens": {"train": {"mean": 50.0, "max": 90, "total": 5000}}}
    est = estimate.of(job, trainer, stats)
    assert est["steps"] == 10 and est["training_tokens"] == 10 * 4 * 50
    assert "memory" not in est and "neither a local model directory nor in the Hugging Face cache" in est["notes"][0]


def test_openai_cost_is_the_plans(tmp_path):
    est = run_cli("backend=openai", "model.name_or_path=gpt-4.1-mini-2025-04-14")
    assert est["cost"]["usd"] > 0 and est["cost"]["billed_tokens"] == est["training_tokens"]
    assert "remotely" in est["notes"][0] and "memory" not in est
