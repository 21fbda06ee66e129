"""The complete examples of docs/writing-a-backend.md run: backend alone, then backend + exporter + evaluator.

Every fenced block with a ``title="path"`` is written into a temporary directory (the
package ``anytune_toy`` and its ``pyproject.toml``), its modules are imported as the
entry points in that ``pyproject.toml`` name them, registered with
``plugins.reset(extra=[...])`` and run end to end. No engine, no torch: a second or two.
"""
from __future__ import annotations

import importlib
import inspect
import re
import sys
import tomllib
from pathlib import Path

import pytest

import core
from core import capabilities, hookspecs, plugins, runner, runproto
from core.conformance import compose

DOC = Path(__file__).resolve().parents[1] / "docs" / "writing-a-backend.md"
BLOCK = re.compile(r'^```(\w+) title="([^"]+)"\n(.*?)^```$', re.M | re.S)
BASE = ["backend=toy", "offline=true", "data.max_rows=16", "train.max_steps=3"]
WITH_EVAL = [*BASE, "data.eval_fraction=0.25"]


def blocks() -> dict[str, str]:
    """Titled code blocks of the page: path -> text."""
    return {path: text for _, path, text in BLOCK.findall(DOC.read_text())}


def entry_points() -> dict[str, str]:
    """The ``anytune`` entry points of the page's pyproject.toml: name -> module."""
    return tomllib.loads(blocks()["pyproject.toml"])["project"]["entry-points"]["anytune"]


@pytest.fixture
def toy(tmp_path_factory):
    """The page's package written to disk, imported, and registered; the registry restored afterwards."""
    root = tmp_path_factory.mktemp("docpkg")
    for path, text in blocks().items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    (root / "anytune_toy" / "__init__.py").touch()
    sys.path.insert(0, str(root))
    try:
        modules = [importlib.import_module(m) for m in entry_points().values()]
        yield plugins.reset(extra=modules)
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == "anytune_toy" or m.startswith("anytune_toy.")]:
            del sys.modules[name]
        plugins.reset()


def test_the_page_holds_a_complete_package():
    """A backend, an exporter, an evaluator and an observer, each a module the pyproject's entry points name."""
    eps = entry_points()
    assert set(eps) == {"toy", "bundle", "rowcount", "printer"}
    found = blocks()
    for module in eps.values():
        assert module.replace(".", "/") + ".py" in found, module
    assert tomllib.loads(found["pyproject.toml"])["tool"]["setuptools"]["packages"] == ["anytune_toy"]


def test_registered_from_the_page(toy):
    """Each step registers in its group with its config node."""
    assert toy.backends["toy"].name == "toy" and not toy.backends["toy"].capabilities.reads_field("train.learning_rate")
    assert "bundle" in toy.exporters and "rowcount" in toy.evaluators
    cfg = compose([*BASE, "export=[bundle]", "eval=[rowcount]", "export.bundle.manifest=false"])
    assert cfg.backend.decay == 0.3 and cfg.export.bundle.manifest is False and cfg.eval.rowcount.max_rows == 0


def test_backend_alone(toy, tmp_path, capsys):
    """The backend trains: metrics rows, an outcome, an adapter; the core wrote result.json."""
    result = runner.run(compose(BASE), tmp_path, toy)
    assert result["status"] == "succeeded", result.get("error")
    assert [(s["name"], s["kind"], s["status"], s["exit_code"]) for s in result["steps"]] == [
        ("toy", "trainer", "succeeded", 0)]
    assert result["artifacts"] == {"adapter": {"path": "artifacts/adapter"}}
    assert result["final"]["steps"] == 3 and result["trainable_parameters"] == 2 * 16 * 64
    rows = runproto.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[0]["loss"] > rows[-1]["loss"]
    assert runproto.read_json(str(tmp_path / "result.json")) == result
    assert runproto.read_json(str(tmp_path / "artifacts/adapter/adapter_config.json"))["r"] == 16
    for name in ("plan/toy_args.json", "plan/toy_engine.py", "plan/runproto.py", "plan/run.sh",
                 "logs/train.stdout.log", "logs/train.stderr.log", "logs/train.outcome.json"):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "eval.json").exists()
    out = capsys.readouterr().out
    assert "[toy] step 3 loss" in out and "[toy] trainer toy: succeeded" in out


def test_backend_exporter_evaluator(toy, tmp_path, capsys):
    """export=[bundle] eval=[rowcount]: three steps, their plan dirs and logs, artefacts and eval.json."""
    result = runner.run(compose([*WITH_EVAL, "export=[bundle]", "eval=[rowcount]"]), tmp_path, toy)
    assert result["status"] == "succeeded", result.get("error")
    assert [(s["name"], s["kind"], s["status"]) for s in result["steps"]] == [
        ("toy", "trainer", "succeeded"), ("bundle", "exporter", "succeeded"), ("rowcount", "evaluator", "succeeded")]
    assert result["artifacts"] == {"adapter": {"path": "artifacts/adapter"}, "bundle": {"path": "artifacts/bundle"}}
    assert result["artifacts"]["bundle"] == {"path": "artifacts/bundle"}
    assert runproto.read_json(str(tmp_path / "artifacts/bundle/MANIFEST.json")) == ["adapter_config.json"]
    held_out = runproto.read_jsonl(str(tmp_path / "data/eval.jsonl"))
    scores = runproto.read_json(str(tmp_path / "eval.json"))
    assert scores == result["eval"] and scores["rowcount"]["rows"]["value"] == len(held_out) > 0
    assert scores["rowcount"]["mean_chars"]["value"] > 0
    from core import scores as schema

    assert schema.check(scores["rowcount"]) == []
    for stem in ("export-bundle", "eval-rowcount"):
        assert (tmp_path / "plan" / stem / "run.sh").is_file() and (tmp_path / "plan" / stem / "runproto.py").is_file()
        assert (tmp_path / "logs" / f"{stem}.outcome.json").is_file(), stem
    assert "[toy] evaluator rowcount: succeeded" in capsys.readouterr().out


def test_steps_on_a_finished_run(toy, tmp_path):
    """The exporter and evaluator run later on the trained run directory (what ``python -m core.after`` does)."""
    assert runner.run(compose(WITH_EVAL), tmp_path, toy)["status"] == "succeeded"
    result = runner.run_after(tmp_path, compose([*WITH_EVAL, "export=[bundle]", "eval=[rowcount]"]), toy)
    assert result["status"] == "succeeded"
    assert [s["name"] for s in result["steps"]] == ["toy", "bundle", "rowcount"]
    assert all(s["status"] == "succeeded" for s in result["steps"])
    assert result["artifacts"]["bundle"] == {"path": "artifacts/bundle"} and "adapter" in result["artifacts"]
    assert runproto.read_json(str(tmp_path / "eval.json"))["rowcount"]["rows"]["value"] > 0


@pytest.mark.parametrize("overrides, error_type, words", [
    (["backend.decay=2"], "ConfigError", "backend.decay=2.0 is out of range"),  # core.number in its node
    (["train.batch_size=128"], "ConfigError", "at most 64"),  # check(): an engine limit
    (["eval=[rowcount]", "eval.rowcount.max_rows=-1", "data.eval_fraction=0.25"], "ConfigError",
     "eval.rowcount.max_rows=-1 is out of range"),
    (["train.learning_rate=1e-3"], "UnreadField", "train.learning_rate"),  # not in reads
    (["method=dpo", "data=demo_pref"], "UnsupportedFeature", "method.name"),  # its table: sft only
    (["eval=[rowcount]"], "UnsupportedFeature", "data.eval=False"),  # the evaluator needs held-out data
])
def test_the_page_refusals(toy, tmp_path, overrides, error_type, words):
    """What the page says is refused is refused before anything runs."""
    result = runner.run(compose([*BASE, *overrides]), tmp_path, toy)
    assert result["status"] == "failed" and result["error_type"] == error_type, result
    assert words in result["error"]
    assert not (tmp_path / "plan").exists()


def test_the_page_names_the_whole_contract():
    """The page cannot silently fall behind the code: every public name, hook, metric and need is on it."""
    text = DOC.read_text()
    hooks = [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "anytune_spec")]
    names = [*(f"core.{n}" for n in core.__all__), *hooks, *runproto.METRICS, *capabilities.NEEDS,
             runproto.OUTCOME_ENV, str(runproto.INTERRUPTED), "ANYTUNE_DISABLE_PLUGINS", "ANYTUNE_PLUGINS_AUTOLOAD",
             "python -m core.backends", "python -m core.after"]
    missing = [n for n in names if f"{n}" not in text]
    assert not missing, f"docs/writing-a-backend.md does not mention {missing}"
