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


CHECK = """
import contextlib, io, json, os, runpy, sys
from axolotl.cli.config import load_cfg
from axolotl.cli.train import do_cli
from axolotl.integrations.base import PluginManager
out = {}
for run_dir in sys.argv[1:]:
    os.chdir(run_dir)
    sys.path.insert(0, run_dir)
    for name in [m for m in sys.modules if m == "plan" or m.startswith("plan.")]:
        del sys.modules[name]
    PluginManager.get_instance().plugins.clear()  # this plan's plugin only
    got = out[run_dir] = {}
    # the plugin's own command, as a user runs it: python plan/anytune_axolotl.py plan/axolotl.yaml
    sys.argv = ["plan/anytune_axolotl.py", "plan/axolotl.yaml"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            runpy.run_path("plan/anytune_axolotl.py", run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code
    got["unknown"] = {"code": code, "printed": printed.getvalue()}
    # Axolotl's own loading and validation (plugins registered, pydantic model, normalisation); for a config
    # it refuses, what its training entry point (python -m axolotl.cli.train, axolotl train) does with it
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            cfg = load_cfg("plan/axolotl.yaml")
        got["cfg"] = {k: str(cfg.get(k)) for k in ("rl", "sequence_len", "adapter")}
    except Exception as exc:
        got["load_error"] = f"{type(exc).__name__}: {exc}"
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                do_cli(config="plan/axolotl.yaml")
            got["train_error"] = None
        except BaseException as exc:
            got["train_error"] = f"{type(exc).__name__}: {exc}"
    sys.path.remove(run_dir)
print(json.dumps(out))
"""
"""Run by Axolotl's interpreter over several plans in one process: the plugin's unknown-key command on each, then
Axolotl's own ``load_cfg`` (and, for a config it refuses, its training entry point ``do_cli``)."""

METHODS = {"sft": [], "dpo": ["method=dpo", "data=demo_pref", "data.max_rows=16"],
           "orpo-full": ["method=orpo", "data=demo_pref", "data.max_rows=16", "peft=none"]}
"""Jobs whose YAML Axolotl's config model must take whole: each method (and a full fine-tune)."""


@pytest.fixture(scope="module")
def checked(python: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Each of :data:`METHODS` planned, plus the SFT plan with a misspelt key added to its YAML by hand and one
    misspelt in its ``datasets:`` entry (``misspelt``), all checked by :data:`CHECK` in one Axolotl process (one interpreter start, not eight)."""
    dirs = {name: plan(tmp_path_factory.mktemp(name), *overrides) for name, overrides in METHODS.items()}
    misspelt = plan(tmp_path_factory.mktemp("misspelt"))
    path = misspelt / "plan" / "axolotl.yaml"
    path.write_text(path.read_text().replace("ds_type: json", "ds_tipe: json", 1) + "micro_batch_szie: 2\n")
    dirs["misspelt"] = misspelt
    proc = subprocess.run([python, "-c", CHECK, *map(str, dirs.values())], capture_output=True, text=True,
                          env=engine_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    return {name: {**found[str(d)], "run_dir": d} for name, d in dirs.items()}


@pytest.mark.parametrize("method", list(METHODS))
def test_yaml_is_axolotls(checked: dict[str, dict], method: str):
    """Axolotl's config model validates the plan and knows every one of its keys (none silently dropped)."""
    got = checked[method]
    assert got["unknown"]["code"] in (0, None) and json.loads(got["unknown"]["printed"]) == [], got["unknown"]
    assert "cfg" in got, got.get("load_error")
    held = got["cfg"]
    name = compose(["backend=axolotl", *METHODS[method]]).method.name
    assert held["rl"] == "None" if name == "sft" else held["rl"].lower().endswith(name), held
    assert held["sequence_len"] == "512"
    assert held["adapter"] == ("None" if "peft=none" in METHODS[method] else "lora"), held


def test_packs_are_trls():
    """anytune's best-fit-decreasing packs (``translate.bfd``) are TRL's own (``trl.pack_dataset``, strategy bfd),
    pack for pack and in order, over lengths with ties, rows longer than a pack and more than one batch of 1,000."""
    import random

    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import pack_dataset

    from plugins.axolotl import translate

    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(1, 40), rng.randint(1, 300), 64, 64, 200]) for _ in range(2300)]
    ids = [[i] * n for i, n in enumerate(lengths)]
    packed = pack_dataset(Dataset.from_dict({"input_ids": ids}), 256, "bfd")
    trl_packs = [sorted(set(r), key=r.index) for r in packed["input_ids"]]
    assert translate.bfd(lengths, 256) == trl_packs


def test_misspelt_native_key_is_refused(python: str, tmp_path: Path):
    """``backend.native.lora_rr`` is refused at validation, naming the key and Axolotl's ``lora_r``; nothing is
    prepared."""
    cfg = compose(["backend=axolotl", *BASE, "+backend.native.lora_rr=8"])
    with pytest.raises(ConfigError, match=r"'lora_rr' \(did you mean 'lora_r'\?\).*silently ignore"):
        runner.check(cfg, plugins.registry())
    result = runner.run(cfg, tmp_path / "run")
    assert result["status"] == "failed" and "lora_rr" in result["error"]
    assert not (tmp_path / "run" / "data").exists() and not (tmp_path / "run" / "plan").exists()


@pytest.mark.parametrize("native", ["+backend.native.attn_implementation=flash_attention_2",
                                    "+backend.native.flash_attention=true"])
def test_cuda_attention_on_cpu_is_refused(native: str):
    """A CUDA attention kernel carried over from a GPU config (Axolotl's own examples set flash_attention_2) is refused
    at validation on a CPU job, naming the key; without it Axolotl stops deep in transformers, trying the Hub."""
    cfg = compose(["backend=axolotl", *BASE, native])
    with pytest.raises(ConfigError, match=r"backend\.native\.(attn_implementation=flash_attention_2|flash_attention): "
                                          r"a CUDA attention kernel, and train\.device=cpu"):
        runner.check(cfg, plugins.registry())
    runner.check(compose(["backend=axolotl", *BASE, "+backend.native.attn_implementation=eager"]), plugins.registry())


def test_native_key_axolotl_knows_reaches_the_yaml(python: str, tmp_path: Path):
    """A native key Axolotl knows is taken and lands in the YAML as given (after the translation)."""
    run_dir = plan(tmp_path, "+backend.native.lora_fan_in_fan_out=false", "+backend.native.adam_beta2=0.95")
    held = yaml.safe_load((run_dir / "plan" / "axolotl.yaml").read_text())
    assert held["adam_beta2"] == 0.95 and held["lora_fan_in_fan_out"] is False


def test_misspelt_key_in_the_yaml_stops_axolotl(checked: dict[str, dict]):
    """A user who edits the ejected YAML and misspells a key gets the plugin's error when Axolotl starts (its
    ``load_cfg``, and its training entry point ``do_cli``: what ``axolotl train`` and ``python -m axolotl.cli.train``
    run), before any data or model loads (Axolotl itself would ignore the key), also inside a ``datasets:`` entry; the
    plugin's own command names it."""
    got, run_dir = checked["misspelt"], checked["misspelt"]["run_dir"]
    assert got["unknown"]["code"] == 1 and "micro_batch_szie" in got["unknown"]["printed"], got["unknown"]
    for error in (got.get("load_error"), got.get("train_error")):
        assert error and "'micro_batch_szie' (did you mean 'micro_batch_size'?)" in error, got
        assert "datasets[0]: 'ds_tipe' (did you mean 'ds_type'?)" in error, got
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


@pytest.mark.slow
def test_packing_trains_trls_packs(python: str, tmp_path: Path):
    """``method.packing=true``: anytune packs the examples as TRL does (its best-fit-decreasing packs, position ids
    from 0 for each example, each example's first label unused) and Axolotl reads the packs as rows with no
    attention mask, so no token attends to another example: a full fine-tune's loss curve is TRL's packed one
    (rows in order, 2 micro-batches of 2 packs a step), step for step within 1e-5."""
    job = ["offline=true", "train.device=cpu", "train.precision=fp32", "data.eval_fraction=0", "data.max_rows=32",
           "train.batch_size=2", "train.grad_accum=2", "train.max_steps=3", "method.packing=true",
           "train.shuffle=false", "peft=none", "train.learning_rate=1e-3", "train.save_artifacts=false"]
    losses = {}
    for backend in ("axolotl", "trl"):
        result = runner.run(compose([f"backend={backend}", *job]), tmp_path / backend)
        assert result["status"] == "succeeded", result.get("error")
        rows = [json.loads(line) for line in (tmp_path / backend / "metrics.jsonl").read_text().splitlines()]
        losses[backend] = [r["loss"] for r in rows if "loss" in r]
    packs = [json.loads(line) for line in (tmp_path / "axolotl" / "plan" / "axolotl_data" / "train.jsonl").open()]
    assert any(r["position_ids"][1:].count(0) for r in packs), "some pack holds several examples"
    assert len(losses["axolotl"]) == 3
    assert losses["axolotl"] == pytest.approx(losses["trl"], abs=1e-5, rel=0), losses
