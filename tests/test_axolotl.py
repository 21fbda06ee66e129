"""The Axolotl backend: its YAML is Axolotl's (its own config model takes every key), a key Axolotl would ignore
is refused with a close match (in backend.native before anything runs; in the YAML when Axolotl starts), and the
ejected YAML trains with Axolotl alone. Its conformance (every field, every job, parity with the reference) is
``TestAxolotl`` in ``tests/test_conformance.py``."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from core import plugins, runner
from core.conformance.jobs import SMALL, compose
from core.errors import ConfigError

BASE = [*SMALL, "train.max_steps=3"]


@pytest.fixture(scope="module")
def python() -> str:
    """Axolotl's interpreter (its managed environment, created on first use as a job creates it)."""
    step = plugins.registry().backend("axolotl")(compose(["backend=axolotl"]))
    runner.ensure_engines([step])
    return step.python()


def plan(tmp_path: Path, *overrides: str) -> Path:
    """Plan a small Axolotl job (``plan_only``) into ``tmp_path/run``; its run directory."""
    cfg = compose(["backend=axolotl", *BASE, "plan_only=true", *overrides])
    run_dir = tmp_path / "run"
    result = runner.run(cfg, run_dir)
    assert result["status"] == "planned", result.get("error")
    return run_dir


def engine_env() -> dict[str, str]:
    """A child environment without anytune on the path, offline, no telemetry, no GPU."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(AXOLOTL_DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", CUDA_VISIBLE_DEVICES="",
               TOKENIZERS_PARALLELISM="false")
    return env


VALIDATE = """
import json, sys
from axolotl.cli.config import load_cfg
cfg = load_cfg(sys.argv[1])
print(json.dumps({k: str(cfg.get(k)) for k in sys.argv[2:]}))
"""
"""Axolotl's own loading and validation of a config (plugins registered, pydantic model, normalisation)."""


@pytest.mark.parametrize("overrides", [[], ["method=dpo", "data=demo_pref", "data.max_rows=16"],
                                       ["method=orpo", "data=demo_pref", "data.max_rows=16", "peft=none"]],
                         ids=["sft", "dpo", "orpo-full"])
def test_yaml_is_axolotls(python: str, tmp_path: Path, overrides: list[str]):
    """Axolotl's config model validates the plan and knows every one of its keys (none silently dropped)."""
    run_dir = plan(tmp_path, *overrides)
    unknown = subprocess.run([python, "plan/anytune_axolotl.py", "plan/axolotl.yaml"], cwd=run_dir,
                             capture_output=True, text=True, env=engine_env())
    assert unknown.returncode == 0 and json.loads(unknown.stdout) == [], unknown.stdout + unknown.stderr[-2000:]
    proc = subprocess.run([python, "-c", VALIDATE, "plan/axolotl.yaml", "rl", "sequence_len", "adapter"],
                          cwd=run_dir, capture_output=True, text=True, env=engine_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    held = json.loads(proc.stdout.strip().splitlines()[-1])
    method = compose(["backend=axolotl", *overrides]).method.name
    assert held["rl"] == "None" if method == "sft" else held["rl"].lower().endswith(method), held
    assert held["sequence_len"] == "512"


def test_misspelt_native_key_is_refused(python: str, tmp_path: Path):
    """``backend.native.lora_rr`` is refused at validation, naming the key and Axolotl's ``lora_r``; nothing is
    prepared."""
    cfg = compose(["backend=axolotl", *BASE, "+backend.native.lora_rr=8"])
    with pytest.raises(ConfigError, match=r"'lora_rr' \(did you mean 'lora_r'\?\).*silently ignore"):
        runner.check(cfg, plugins.registry())
    result = runner.run(cfg, tmp_path / "run")
    assert result["status"] == "failed" and "lora_rr" in result["error"]
    assert not (tmp_path / "run" / "data").exists() and not (tmp_path / "run" / "plan").exists()


def test_native_key_axolotl_knows_reaches_the_yaml(python: str, tmp_path: Path):
    """A native key Axolotl knows is taken and lands in the YAML as given (after the translation)."""
    run_dir = plan(tmp_path, "+backend.native.lora_fan_in_fan_out=false", "+backend.native.adam_beta2=0.95")
    held = yaml.safe_load((run_dir / "plan" / "axolotl.yaml").read_text())
    assert held["adam_beta2"] == 0.95 and held["lora_fan_in_fan_out"] is False


@pytest.mark.slow
def test_misspelt_key_in_the_yaml_stops_axolotl(python: str, tmp_path: Path):
    """A user who edits the ejected YAML and misspells a key gets the plugin's error when Axolotl starts, before any
    data or model loads (Axolotl itself would ignore the key)."""
    run_dir = plan(tmp_path)
    path = run_dir / "plan" / "axolotl.yaml"
    path.write_text(path.read_text() + "micro_batch_szie: 2\n")
    proc = subprocess.run([python, "-m", "axolotl.cli.train", "plan/axolotl.yaml"], cwd=run_dir, capture_output=True,
                          text=True, env=engine_env(), timeout=600)
    assert proc.returncode != 0
    assert "'micro_batch_szie' (did you mean 'micro_batch_size'?)" in proc.stdout + proc.stderr
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "plan" / "axolotl_prepared").exists()


@pytest.mark.slow
def test_ejected_yaml_trains_with_axolotl_alone(python: str, tmp_path: Path):
    """``PYTHONPATH=. axolotl train plan/axolotl.yaml --launcher python`` (the YAML's header), run by hand in the run directory of a planned job
    with Axolotl's own CLI and no anytune, trains: metrics.jsonl, the adapter in artifacts/adapter, the outcome."""
    run_dir = plan(tmp_path)
    axolotl = str(Path(python).parent / "axolotl")
    env = engine_env()
    env["PATH"] = f"{Path(python).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = "."  # as the YAML's header says: Axolotl imports the plugin from the run directory
    proc = subprocess.run([axolotl, "train", "plan/axolotl.yaml", "--launcher", "python"], cwd=run_dir,
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert (run_dir / "artifacts" / "adapter" / "adapter_model.safetensors").is_file()
    outcome = json.loads((run_dir / "outcome.json").read_text())
    assert outcome["artifacts"] == {"adapter": {"path": "artifacts/adapter"}}
    assert outcome["versions"]["axolotl"] == "0.19.0" and outcome["trainable_parameters"] > 0
    shutil.rmtree(run_dir / "plan" / "axolotl_prepared", ignore_errors=True)
