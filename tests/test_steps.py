"""The exporter/evaluator half of the step contract: ``export=[merged]``, ``eval=[heldout]`` and
``python -m core.after`` on real engines and the tiny model.

Fast: plans, refusals before anything runs, the command line's usage errors. Slow: whole jobs (TRL;
torchtune in its managed environment), the merged model against the adapter on its base, the held-out
loss against an independent computation.
"""
from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from core import lossmask, plugins, runner, runproto
from core.conformance import SMALL, compose

ROOT = Path(__file__).resolve().parents[1]
CORE = [sys.executable, "-m", "core"]
AFTER = [sys.executable, "-m", "core.after"]
PROMPT = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many does he have?"},
          {"role": "assistant", "content": "He has 3 + 4 = 7 apples."}]


def small(*overrides: str) -> list[str]:
    """SMALL with ``overrides`` replacing its keys (Hydra refuses a key given twice), shorter training."""
    keys = {o.split("=", 1)[0] for o in overrides}
    base = [o for o in SMALL if o.split("=", 1)[0] not in keys]
    return base + (["train.max_steps=4"] if "train.max_steps" not in keys else []) + list(overrides)


def anytune(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*args], capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})})


def job_config(run_dir: Path):
    """The run's resolved job (``config.yaml``)."""
    return OmegaConf.load(run_dir / "config.yaml")


def base_tokenizer(run_dir: Path):
    """The base model's tokenizer with the run's chat template of record."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(job_config(run_dir).model.name_or_path)
    tok.chat_template = (run_dir / "data" / "chat_template.jinja").read_text()
    return tok


def trained_model(run_dir: Path):
    """The run's trained model as peft/transformers load it: the adapter on its base, or the full model."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    arts = runproto.read_json(str(run_dir / "result.json"))["artifacts"]
    if "adapter" in arts:
        return AutoPeftModelForCausalLM.from_pretrained(run_dir / arts["adapter"]["path"]).eval()
    return AutoModelForCausalLM.from_pretrained(run_dir / arts["model"]["path"]).eval()


def heldout_reference(model, run_dir: Path) -> tuple[float, int]:
    """Held-out loss computed here, independently of the evaluator: one unpadded forward per eval record,
    labels shifted as Hugging Face does, sum of token losses / loss tokens (as ``reference_loss``)."""
    import torch

    cfg = job_config(run_dir)
    kind = runproto.read_json(str(run_dir / "data" / "stats.json"))["kind"]
    records = runproto.read_jsonl(str(run_dir / "data" / "eval.jsonl"))
    total, count = 0.0, 0
    for row in lossmask.tokenize_records(records, base_tokenizer(run_dir), kind, cfg.method.completion_only_loss,
                                         cfg.train.max_length):
        ids, mask = torch.tensor(row["input_ids"]), torch.tensor(row["completion_mask"])
        labels = torch.where(mask.bool(), ids, torch.tensor(-100))
        with torch.no_grad():
            logits = model(ids[None]).logits[0, :-1].float()
        total += torch.nn.functional.cross_entropy(logits, labels[1:], ignore_index=-100, reduction="sum").item()
        count += int((labels[1:] != -100).sum())
    return total / count, count


def logits_of(model, tok) -> "torch.Tensor":  # noqa: F821
    import torch

    ids = tok.apply_chat_template(PROMPT, tokenize=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        return model(**ids).logits


def check_merged(run_dir: Path) -> None:
    """artifacts/merged loads in plain transformers, renders the template of record, and its logits are the
    trained model's (adapter on base) to 1e-4."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = run_dir / "artifacts" / "merged"
    names = {p.name for p in merged.iterdir()}
    assert {"config.json", "chat_template.jinja", "tokenizer.json", "tokenizer_config.json"} <= names, names
    assert any(n.endswith(".safetensors") for n in names) and not any(n.endswith((".bin", ".pt")) for n in names)
    assert "adapter_config.json" not in names
    template = (run_dir / "data" / "chat_template.jinja").read_text()
    assert (merged / "chat_template.jinja").read_text() == template
    assert json.loads((merged / "tokenizer_config.json").read_text()).get("chat_template", template) == template
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    tok = AutoTokenizer.from_pretrained(merged)
    assert tok.chat_template == template
    assert tok.apply_chat_template(PROMPT, tokenize=False) == base_tokenizer(run_dir).apply_chat_template(
        PROMPT, tokenize=False)
    trained = trained_model(run_dir)
    ours, theirs = logits_of(model, tok), logits_of(trained, tok)
    assert (ours - theirs).abs().max() < 1e-4, (ours - theirs).abs().max()
    if hasattr(trained, "disable_adapter"):
        with trained.disable_adapter():
            base = logits_of(trained, tok)
        assert (ours - base).abs().max() > 1e-4, "training changed nothing: the comparison proves nothing"


def check_heldout(run_dir: Path, scores: dict) -> None:
    """The evaluator's scores (eval.json's one schema) equal the independent computation on the trained model."""
    from core import scores as schema

    assert not schema.check(scores), schema.check(scores)
    loss, tokens = heldout_reference(trained_model(run_dir), run_dir)
    assert scores["loss"]["n"] == tokens == scores["perplexity"]["n"]
    assert scores["loss"]["scorer"] == "anytune.heldout" and scores["loss"]["stderr"] is None
    assert abs(scores["loss"]["value"] - loss) < 1e-4, (scores["loss"], loss)
    assert math.isclose(scores["perplexity"]["value"], math.exp(scores["loss"]["value"]), rel_tol=1e-9)


# -- the steps' shape (fast) ----------------------------------------------------------------------------


def test_registered_with_their_nodes():
    reg = plugins.registry()
    merged, heldout = reg.step("export", "merged"), reg.step("eval", "heldout")
    assert merged.kind == "exporter" and heldout.kind == "evaluator"
    assert merged.capabilities.needs == {"weights"}
    assert heldout.capabilities.needs == {"weights", "tokenizer", "template", "heldout"}
    cfg = compose(small("export=[merged]", "eval=[heldout]", "export.merged.dtype=bfloat16",
                        "eval.heldout.batch_size=2"))
    assert cfg.export.merged.dtype == "bfloat16" and cfg.eval.heldout.batch_size == 2
    assert cfg.eval.heldout.max_rows is None


@pytest.mark.parametrize("worker", ["plugins/merged/worker.py", "plugins/heldout/worker.py"])
def test_workers_import_only_engines_stdlib_and_shipped_modules(worker):
    allowed = {"transformers", "peft", "torch", "runproto", "lossmask", "hfglue", "scores"} | set(sys.stdlib_module_names)
    tree = ast.parse((ROOT / worker).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert names <= allowed, names - allowed


def test_plan_only_writes_each_steps_plan(tmp_path):
    result = runner.run(compose(small("plan_only=true", "data.eval_fraction=0.1", "export=[merged]",
                                      "eval=[heldout]", "eval.heldout.max_rows=5")), tmp_path)
    assert result["status"] == "planned", result.get("error")
    merged, heldout = tmp_path / "plan" / "export-merged", tmp_path / "plan" / "eval-heldout"
    for d, files in ((merged, ["merged.json", "merged_worker.py", "runproto.py", "hfglue.py"]),
                     (heldout, ["heldout.json", "heldout_worker.py", "runproto.py", "lossmask.py", "scores.py"])):
        for name in [*files, "run.sh", "command.json"]:
            assert (d / name).is_file(), d / name
    spec = json.loads((merged / "merged.json").read_text())
    assert spec["adapter"] == "artifacts/adapter" and spec["model"] is None and spec["out"] == "artifacts/merged"
    assert spec["template"] == "data/chat_template.jinja" and spec["dtype"] == "auto"
    spec = json.loads((heldout / "heldout.json").read_text())
    assert spec["eval"] == "data/eval.jsonl" and spec["kind"] == "messages" and spec["max_rows"] == 5
    assert spec["completion_only"] is True and spec["max_length"] == 512
    command = json.loads((heldout / "command.json").read_text())["command"]
    assert command[1:] == ["plan/eval-heldout/heldout_worker.py", "plan/eval-heldout/heldout.json"]
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "eval.json").exists()


# -- refused before anything runs (fast) ----------------------------------------------------------------


@pytest.mark.parametrize("overrides, error_type, words", [
    (["eval=[heldout]"], "ConfigError", ["data.eval", "data.eval_fraction"]),
    (["eval=[heldout]", "method=dpo", "data=demo_pref", "data.eval_fraction=0.1", "data.max_rows=16"],
     "UnsupportedFeature", ["heldout", "data.kind=preference"]),
    (["export=[merged]", "train.save_artifacts=false"], "ConfigError", ["train.save_artifacts"]),
    (["eval=[heldout]", "data.eval_fraction=0.1", "eval.heldout.batch_size=0"], "ConfigError",
     ["eval.heldout.batch_size"]),
    (["export=[merged]", "export.merged.dtype=fp16"], "ConfigError", ["export.merged.dtype", "float16"]),
], ids=["no-eval-data", "preference", "no-artifacts", "batch-size", "dtype"])
def test_refused_before_anything_runs(tmp_path, overrides, error_type, words):
    result = runner.run(compose(small(*overrides)), tmp_path)
    assert result["status"] == "failed" and result["error_type"] == error_type, result.get("error")
    for word in words:
        assert word in result["error"], result["error"]
    assert not (tmp_path / "plan").exists() and not (tmp_path / "data").exists()
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("command", [CORE, AFTER])
def test_unknown_exporter_lists_installed(tmp_path, command):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "result.json").write_text('{"status": "succeeded"}')
    (run_dir / "config.yaml").write_text("backend:\n  name: trl\n")
    args = [*command, "export=[mergd]"] + ([str(run_dir)] if command is AFTER else [f"run_dir={run_dir}"])
    p = anytune(*args)
    assert p.returncode == 2, p.stderr
    assert "no exporter 'mergd' (did you mean 'merged'?); installed exporters: " in p.stderr, p.stderr
    assert "merged" in p.stderr.split("installed exporters: ")[1], p.stderr
    assert "Traceback" not in p.stderr
    assert not (run_dir / "plan").exists()


@pytest.mark.parametrize("args, words", [
    ([], "name one finished run directory"),
    (["{run}", "train.learning_rate=1e-3", "eval=[heldout]"], "'train.learning_rate' would change the trained job"),
    (["{run}"], "name the steps to run"),
    (["{empty}", "eval=[heldout]"], "is not a run directory"),
    (["{failed}", "eval=[heldout]"], "status is failed"),
    (["{other}", "eval=[heldout]"], "no backend 'nemo'"),
    (["{run}", "eval=[heldout]", "eval.heldout.batchsize=2"], "unknown config field 'eval.heldout.batchsize'"),
], ids=["no-dir", "train-override", "no-steps", "not-a-run", "failed-run", "backend-missing", "unknown-field"])
def test_after_usage_errors(tmp_path, args, words):
    dirs = {n: tmp_path / n for n in ("run", "empty", "failed", "other")}
    for name, d in dirs.items():
        d.mkdir()
        if name != "empty":
            (d / "result.json").write_text(json.dumps({"status": "failed" if name == "failed" else "succeeded"}))
            (d / "config.yaml").write_text(f"backend:\n  name: {'nemo' if name == 'other' else 'trl'}\n")
    p = anytune(*AFTER, *[a.format(**dirs) for a in args])
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr.startswith("anytune: error: ") and words in p.stderr, p.stderr


# -- whole jobs (slow) ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_trl_job_with_merged_and_heldout(tmp_path):
    """``python -m core export=[merged] eval=[heldout]``: three steps, the merged model is the adapter on its
    base, the held-out loss is the loss of the trained model on data/eval.jsonl."""
    run_dir = tmp_path / "run"
    p = anytune(*CORE, *small("export=[merged]", "eval=[heldout]", "data.eval_fraction=0.1"), f"run_dir={run_dir}")
    assert p.returncode == 0, p.stderr[-3000:]
    result = runproto.read_json(str(run_dir / "result.json"))
    assert result["status"] == "succeeded"
    assert [(s["kind"], s["name"], s["status"]) for s in result["steps"]] == [
        ("trainer", "trl", "succeeded"), ("exporter", "merged", "succeeded"), ("evaluator", "heldout", "succeeded")]
    assert result["artifacts"] == {"adapter": {"path": "artifacts/adapter"}, "merged": {"path": "artifacts/merged"}}
    scores = runproto.read_json(str(run_dir / "eval.json"))
    assert set(scores) == {"heldout"} and result["eval"] == scores
    assert set(scores["heldout"]) == {"loss", "perplexity"}
    for stem in ("export-merged", "eval-heldout"):
        assert (run_dir / "logs" / f"{stem}.outcome.json").is_file()
        assert (run_dir / "plan" / stem / "run.sh").is_file()
    check_merged(run_dir)
    check_heldout(run_dir, scores["heldout"])


@pytest.mark.slow
def test_full_fine_tune_merged_and_heldout(tmp_path):
    """A full fine-tune: merged re-saves artifacts/model in the chosen dtype; heldout scores the full model."""
    run_dir = tmp_path / "run"
    result = runner.run(compose(small("peft=none", "train.learning_rate=1e-3", "train.max_steps=2",
                                      "data.eval_fraction=0.1", "export=[merged]", "eval=[heldout]")), run_dir)
    assert result["status"] == "succeeded", result.get("error")
    assert set(result["artifacts"]) == {"model", "merged"}
    check_merged(run_dir)
    check_heldout(run_dir, result["eval"]["heldout"])


@pytest.mark.slow
def test_after_on_a_finished_run(tmp_path):
    """``python -m core.after RUN_DIR eval=[heldout]`` scores a run trained without it, without training again;
    a second call adds the merged export (in bfloat16) and keeps the scores."""
    run_dir = tmp_path / "run"
    result = runner.run(compose(small("data.eval_fraction=0.1")), run_dir)
    assert result["status"] == "succeeded", result.get("error")
    assert not (run_dir / "eval.json").exists()
    untouched = {p: (run_dir / p).read_bytes() for p in
                 ("metrics.jsonl", "logs/train.stdout.log", "artifacts/adapter/adapter_model.safetensors",
                  "data/train.jsonl", "data/eval.jsonl", "config.yaml", "plan/trl_args.json")}

    p = anytune(*AFTER, str(run_dir), "eval=[heldout]", "eval.heldout.batch_size=3")
    assert p.returncode == 0, p.stderr[-3000:]
    after = runproto.read_json(str(run_dir / "result.json"))
    assert after["status"] == "succeeded" and after["final"] == result["final"]
    assert [(s["kind"], s["name"], s["status"]) for s in after["steps"]] == [
        ("trainer", "trl", "succeeded"), ("evaluator", "heldout", "succeeded")]
    scores = runproto.read_json(str(run_dir / "eval.json"))
    assert after["eval"] == scores and set(scores) == {"heldout"}
    check_heldout(run_dir, scores["heldout"])
    assert json.loads((run_dir / "plan/eval-heldout/heldout.json").read_text())["batch_size"] == 3

    p = anytune(*AFTER, str(run_dir), "export=[merged]", "export.merged.dtype=bfloat16")
    assert p.returncode == 0, p.stderr[-3000:]
    after = runproto.read_json(str(run_dir / "result.json"))
    assert [s["name"] for s in after["steps"]] == ["trl", "heldout", "merged"]
    assert set(after["artifacts"]) == {"adapter", "merged"}
    assert runproto.read_json(str(run_dir / "eval.json")) == scores and after["eval"] == scores
    assert json.loads((run_dir / "artifacts/merged/config.json").read_text())["dtype"] == "bfloat16"
    for path, content in untouched.items():
        assert (run_dir / path).read_bytes() == content, f"{path} changed"


@pytest.mark.slow
def test_after_reports_a_failed_step(tmp_path):
    """A step that fails exits 1 with its error; the run's status stays succeeded, the step's is failed."""
    run_dir = tmp_path / "run"
    result = runner.run(compose(small("data.eval_fraction=0.1", "train.max_steps=1")), run_dir)
    assert result["status"] == "succeeded", result.get("error")
    (run_dir / "artifacts/adapter/adapter_model.safetensors").write_bytes(b"not a safetensors file")
    p = anytune(*AFTER, str(run_dir), "eval=[heldout]")
    assert p.returncode == 1, p.stderr[-3000:]
    assert "anytune: error: evaluator 'heldout' failed" in p.stderr
    after = runproto.read_json(str(run_dir / "result.json"))
    assert after["status"] == "succeeded" and after["steps"][-1]["status"] == "failed"
    assert not (run_dir / "eval.json").exists()


# -- torchtune: the scorer and the exporter are engine-neutral (slow, managed environment) -----------------


def torchtune_job(*overrides: str):
    if "torchtune" not in plugins.registry().backends:
        pytest.skip("the torchtune backend is not installed")
    return compose(["backend=torchtune", *small(*overrides)])


@pytest.mark.slow
def test_heldout_in_a_torchtune_job(tmp_path):
    """torchtune cannot evaluate during training (its table refuses data.eval), yet held-out data that only an
    evaluator reads is accepted: the trainer is asked nothing about it."""
    result = runner.run(torchtune_job("data.eval_fraction=0.1", "eval=[heldout]"), tmp_path)
    assert result["status"] == "succeeded", result.get("error")
    assert math.isfinite(result["eval"]["heldout"]["loss"]["value"])


@pytest.mark.slow
def test_heldout_and_merged_on_a_torchtune_run(tmp_path):
    """The same scorer and exporter on torchtune's artefact: a finite loss equal to the independent
    computation, and a merged model equal to the adapter on its base."""
    run_dir = tmp_path / "run"
    result = runner.run(torchtune_job("data.eval_fraction=0.2", "eval=[heldout]"), run_dir)
    assert result["status"] == "succeeded", result.get("error")
    assert set(result["artifacts"]) == {"adapter"}
    rows = len((run_dir / "data" / "eval.jsonl").read_text().splitlines())
    metrics = (run_dir / "metrics.jsonl").read_bytes()

    p = anytune(*AFTER, str(run_dir), "export=[merged]", "eval=[heldout]")
    assert p.returncode == 0, p.stderr[-3000:]
    after = runproto.read_json(str(run_dir / "result.json"))
    assert {s["name"]: s["status"] for s in after["steps"]} == {
        "torchtune": "succeeded", "merged": "succeeded", "heldout": "succeeded"}
    scores = runproto.read_json(str(run_dir / "eval.json"))["heldout"]
    assert math.isfinite(scores["loss"]["value"]) and rows > 0 and scores["loss"]["n"] > 0
    check_heldout(run_dir, scores)
    check_merged(run_dir)
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics
