"""``python -m core.migrate``: the engines' own published example configs (``tests/migrate_examples/``, with their
source and commit) become anytune jobs; every key is accounted for, and the job planned on the same backend writes
every mapped or passed-through key as the source had it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core import config, migrate, runner

HERE = Path(__file__).parent / "migrate_examples"
EXAMPLES = sorted((p.parent.name, p) for p in HERE.glob("*/*.y*ml"))
TINY = "model.name_or_path=${anytune_asset:tiny-llama}"
MODEL_KEYS = {"base_model", "tokenizer_config", "checkpointer.checkpoint_dir"}
"""Keys that name the model: the test plans on the tiny local model instead."""
@pytest.fixture(scope="module")
def nf4_model(tmp_path_factory) -> str:
    """The tiny model widened so that torchao's NF4 can quantise every linear weight (torchtune's QLoRA); planning
    reads only its config.json and tokenizer."""
    import json
    import shutil

    tiny = Path(config.asset("tiny-llama"))
    path = tmp_path_factory.mktemp("nf4")
    for f in tiny.iterdir():
        shutil.copy(f, path / f.name)
    cfg = json.loads((tiny / "config.json").read_text())
    cfg.update(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=64)
    (path / "config.json").write_text(json.dumps(cfg))
    return str(path)


def source_leaves(engine: str, cfg: dict) -> list[str]:
    return list(cfg) if engine == "axolotl" else list(migrate.flatten(cfg))


def planned_native(engine: str, run_dir: Path) -> dict:
    name = {"axolotl": "axolotl.yaml", "torchtune": "torchtune.yaml"}[engine]
    return yaml.safe_load((run_dir / "plan" / name).read_text())


def lookup(tree: dict, key: str, engine: str):
    if engine == "axolotl":
        return tree.get(key, KeyError)
    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return KeyError
        node = node[part]
    return node


def same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def test_examples_are_there_with_their_source():
    for engine in ("axolotl", "torchtune"):
        files = [p.name for e, p in EXAMPLES if e == engine]
        source = (HERE / engine / "SOURCE").read_text()
        assert len(files) >= 4 and "commit: " in source and all(f in source for f in files), engine


@pytest.mark.parametrize("engine,path", EXAMPLES, ids=[p.name for _, p in EXAMPLES])
def test_round_trip(engine, path, tmp_path, nf4_model):
    mig = migrate.migrate(engine, path)
    src = migrate.load(path)
    covered = {e.key for e in mig.entries}
    for leaf in source_leaves(engine, src):  # nothing dropped silently
        assert any(leaf == k or leaf.startswith(k + ".") for k in covered), leaf
    assert all(e.status != migrate.NONE or e.note for e in mig.entries), "no equivalent always says what to do"
    data = "data=demo_pref" if mig.groups.get("method") == "dpo" else "data=demo_sft"
    model = f"model.name_or_path={nf4_model}" if engine == "torchtune" and mig.fields["peft.type"] == "qlora" else TINY
    # Axolotl's examples are GPU configs (attn_implementation: flash_attention_2, refused on a CPU job): planned for CUDA
    device = ["train.device=cuda"] if engine == "axolotl" else []
    overrides = [*mig.overrides(), model, data, *device, "offline=true", "plan_only=true", "data.max_rows=24"]
    config.register()
    cfg = config.compose([o for o in overrides if not o.startswith("data.train=")])
    result = runner.run(cfg, tmp_path / "run")
    assert result["status"] == "planned", result.get("error")
    native = planned_native(engine, tmp_path / "run")
    compared = 0
    for e in mig.entries:
        if e.status not in (migrate.MAPPED, migrate.NATIVE) or not e.same_key or e.key in MODEL_KEYS:
            continue
        if e.target == "(fixed)" or e.target.startswith("model.name_or_path"):
            continue
        got = lookup(native, e.key, engine)
        assert got is not KeyError and same(got, e.value), (e.key, e.value, got)
        compared += 1
    assert compared >= 8, compared


def test_cli_writes_an_experiment_that_composes(tmp_path):
    out = tmp_path / "experiment" / "lora.yaml"
    p = subprocess.run([sys.executable, "-m", "core.migrate", "--from", "torchtune",
                        str(HERE / "torchtune" / "1B_lora_single_device.yaml"), "--out", str(out)],
                       capture_output=True, text=True, env={**os.environ, "COLUMNS": "250"})
    assert p.returncode == 0 and not p.stderr, p.stderr
    assert "mapped" in p.stdout and "native" in p.stdout and "no equivalent" in p.stdout and str(out) in p.stdout
    assert out.read_text().startswith("# @package _global_\n# python -m core +experiment=lora")
    assert f"hydra.searchpath=[file://{tmp_path}]' +experiment=lora" in p.stdout
    config.register()
    cfg = config.compose([f"hydra.searchpath=[file://{tmp_path}]", "+experiment=lora"])
    assert cfg.backend.name == "torchtune" and cfg.peft.r == 64 and cfg.peft.alpha == 128
    assert cfg.backend.native.optimizer.fused is True and cfg.train.grad_accum == 8
    assert cfg.data.train.startswith("SET data.train=FILE") and "alpaca_cleaned_dataset" in cfg.data.train


def test_unknown_engine_is_refused():
    p = subprocess.run([sys.executable, "-m", "core.migrate", "--from", "nemo", str(HERE / "axolotl" / "lora-1b.yml"),
                        "--out", "/dev/null"], capture_output=True, text=True)
    assert p.returncode == 2 and "axolotl, torchtune" in p.stderr
