"""The generation evaluators (``eval=[generate]``, ``eval=[gsm8k]``) and eval.json's one schema.

Fast: registration, refusals before anything loads, the plan, extraction and comparison, the schema checker.
Slow: the tiny model trained on a tiny task answers it (exact match above zero, every answer kept), GSM8K rows
go through the same scorer, and every evaluator's scores follow one schema.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from core import plugins, runner, runproto, scores
from core.conformance import SMALL, compose

ROOT = Path(__file__).resolve().parents[1]
ANSWER = r"####\s*(\S+)"
PAIRS = [(3, 4), (10, 5), (7, 8), (20, 1), (6, 6), (9, 2), (12, 30), (40, 2)]


def task_file(path: Path) -> Path:
    """A task the tiny model learns in a minute: 'What is a plus b?' -> '#### a+b', eight rows."""
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is {a} plus {b}?"},
        {"role": "assistant", "content": f"#### {a + b}"}]}) + "\n" for a, b in PAIRS))
    return path


def job(*overrides: str):
    keys = {o.split("=", 1)[0] for o in overrides}
    return compose([o for o in SMALL if o.split("=", 1)[0] not in keys] + list(overrides))


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """The worker imported as a plan directory holds it (the modules it imports shipped beside it)."""
    import importlib.util
    import shutil

    d = tmp_path_factory.mktemp("plan")
    for src, name in (("plugins/generate/worker.py", "generate_worker.py"), ("plugins/heldout/worker.py",
                      "heldout_worker.py"), ("plugins/hftrainer/glue.py", "hfglue.py"), ("core/runproto.py", None),
                      ("core/lossmask.py", None), ("core/scores.py", None)):
        shutil.copy(ROOT / src, d / (name or Path(src).name))
    spec = importlib.util.spec_from_file_location("generate_worker", d / "generate_worker.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    sys.path.remove(str(d))


# -- shape (fast) -----------------------------------------------------------------------------------------


def test_registered_with_their_nodes():
    reg = plugins.registry()
    gen, gsm = reg.step("eval", "generate"), reg.step("eval", "gsm8k")
    assert gen.kind == gsm.kind == "evaluator"
    assert gen.capabilities.needs == {"weights", "tokenizer", "template"}  # held-out data only without data=
    cfg = job("eval=[gsm8k,generate]", "eval.gsm8k.max_rows=3", "data.eval_fraction=0.1")
    assert cfg.eval.gsm8k.prompt_field == "question" and cfg.eval.gsm8k.numeric is True
    assert cfg.eval.gsm8k.extract == ANSWER and cfg.eval.gsm8k.fallback == "last_number"
    assert cfg.eval.generate.extract is None and cfg.eval.generate.data is None


@pytest.mark.parametrize("overrides, words", [
    (["eval=[generate]"], ["held-out", "data.eval_fraction"]),
    (["eval=[generate]", "data.eval_fraction=0.1", 'eval.generate.extract="(a)(b)"'], ["2 groups"]),
    (["eval=[generate]", "data.eval_fraction=0.1", 'eval.generate.extract="(unclosed"'],
     ["eval.generate.extract", "not a regular expression"]),
    (["eval=[generate]", "eval.generate.data=/nonexistent/rows.jsonl"], ["no such file"]),
    (["eval=[generate]", "eval.generate.data={rows}", "eval.generate.prompt_field=question"],
     ["prompt_field and answer_field together"]),
    (["eval=[generate]", "eval.generate.data={rows}", "eval.generate.prompt_field=q",
      "eval.generate.answer_field=a"], ["has no field q, a"]),
    (["eval=[gsm8k]", "eval.gsm8k.fallback=first"], ["eval.gsm8k.fallback"]),
    (["eval=[gsm8k]", "eval.gsm8k.max_generated=0"], ["eval.gsm8k.max_generated"]),
], ids=["no-heldout", "two-groups", "bad-regex", "missing-file", "half-fields", "wrong-fields", "fallback",
        "max-new-tokens"])
def test_refused_before_anything_runs(tmp_path, overrides, words):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    result = runner.run(job(*[o.format(rows=rows) for o in overrides]), tmp_path / "run")
    assert result["status"] == "failed", result
    for word in words:
        assert word in result["error"], result["error"]
    assert not (tmp_path / "run" / "data").exists() and not (tmp_path / "run" / "plan").exists()


def test_gsm8k_plan_reads_the_shared_test_split(tmp_path):
    result = runner.run(job("plan_only=true", "eval=[gsm8k]", "eval.gsm8k.max_rows=5"), tmp_path)
    assert result["status"] == "planned", result.get("error")
    d = tmp_path / "plan" / "eval-gsm8k"
    spec = json.loads((d / "gsm8k.json").read_text())
    assert spec["data"].endswith("gsm8k/test.jsonl") and Path(spec["data"]).is_file()
    assert spec["kind"] == "fields" and spec["max_rows"] == 5 and spec["out"] == "artifacts/eval/gsm8k.jsonl"
    for name in ("generate_worker.py", "heldout_worker.py", "runproto.py", "scores.py", "hfglue.py", "lossmask.py",
                 "run.sh"):
        assert (d / name).is_file(), name
    assert json.loads((d / "command.json").read_text())["command"][1:] == [
        "plan/eval-gsm8k/generate_worker.py", "plan/eval-gsm8k/gsm8k.json"]


def test_extraction_and_comparison(worker):
    assert worker.extract("so 48+24=72.\n#### 72", ANSWER, "last_number") == "72"
    assert worker.extract("it is 1,234 then 56.", ANSWER, "last_number") == "56"
    assert worker.extract("no number", ANSWER, "last_number") is None
    assert worker.extract("no marker 5", ANSWER, "none") is None
    assert worker.extract("  whole text ", None, "none") == "  whole text "
    assert worker.extract("answer: B", r"answer: [A-D]", "none") == "answer: B"  # no group: the whole match
    n = lambda s: worker.normalise(s, True)  # noqa: E731
    assert n("1,234") == n("1234") == n("$1234.") == n("1234.0") and n("0.5") != n("5")
    assert worker.normalise(" Paris ", False) == "Paris" and worker.normalise("1,234", False) == "1,234"


def test_gsm8k_rows_become_single_user_turns(worker, tmp_path):
    rows = tmp_path / "gsm.jsonl"
    rows.write_text(json.dumps({"question": "Q?", "answer": "work\n#### 3"}) + "\n")
    spec = {"data": str(rows), "max_rows": None, "kind": "fields", "prompt_field": "question",
            "answer_field": "answer", "system": "Be brief."}
    assert worker.rows_of(spec) == [([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q?"}],
                                     "work\n#### 3")]


def test_score_schema():
    s = scores.mean_score([1, 0, 1, 1], "anytune.generate", "1")
    assert s["value"] == 0.75 and s["n"] == 4 and math.isclose(s["stderr"], 0.25)  # std 0.5 / sqrt(4)
    assert scores.check({"exact_match": s}) == []
    assert scores.check({"loss": 1.2}) and scores.check({}) and scores.check({"m": {**s, "n": -1}})
    assert scores.mean_score([1], "x", "1")["stderr"] is None


# -- a model that learned a task (slow) ----------------------------------------------------------------------


@pytest.mark.slow
def test_generate_gsm8k_and_heldout_on_a_learned_task(tmp_path):
    """The tiny model trained on eight sums answers most of them (exact match > 0), the answers are kept; GSM8K
    rows go through the same scorer; every evaluator's scores follow eval.json's one schema."""
    task = task_file(tmp_path / "task.jsonl")
    run_dir = tmp_path / "run"
    result = runner.run(job("peft=none", f"data.train={task}", f"data.eval={task}", "train.max_steps=60",
                            "train.learning_rate=3e-3", "train.batch_size=8", "eval=[generate,gsm8k,heldout]",
                            f'eval.generate.extract="{ANSWER}"', f'eval.generate.answer_extract="{ANSWER}"',
                            "eval.generate.numeric=true", "eval.generate.max_generated=12",
                            "eval.gsm8k.max_rows=6", "eval.gsm8k.max_generated=24", "eval.gsm8k.batch_size=4"),
                        run_dir)
    assert result["status"] == "succeeded", result.get("error")
    evals = runproto.read_json(str(run_dir / "eval.json"))
    assert set(evals) == {"generate", "gsm8k", "heldout"} and result["eval"] == evals
    for name, s in evals.items():
        assert scores.check(s) == [], (name, s)
    em = evals["generate"]["exact_match"]
    assert em["n"] == len(PAIRS) and em["value"] > 0 and em["scorer"] == "anytune.generate"
    answers = runproto.read_jsonl(str(run_dir / "artifacts/eval/generate.jsonl"))
    assert sum(r["correct"] for r in answers) == round(em["value"] * len(PAIRS))
    assert all(r["prompt"].endswith("<|im_start|>assistant\n") for r in answers)
    assert result["artifacts"]["eval_generate"] == {"path": "artifacts/eval/generate.jsonl"}
    gsm = runproto.read_jsonl(str(run_dir / "artifacts/eval/gsm8k.jsonl"))
    assert evals["gsm8k"]["exact_match"]["n"] == len(gsm) == 6
    assert all(r["expected"] and r["expected"].replace(",", "").lstrip("-").isdigit() for r in gsm)
    assert evals["heldout"]["loss"]["value"] < 2.0  # learned: the untrained model's loss is ~ln(1024) = 6.9


def test_no_field_reads_as_a_secret():
    """The core redacts and moves out any field whose name looks secret (``*token*`` ...): none of these steps'
    fields may (``max_new_tokens`` was: config.yaml held ``'***'`` and a plan ``${oc.env:...}``)."""
    import dataclasses

    from core.config import SECRET

    reg = plugins.registry()
    for group, name in (("eval", "generate"), ("eval", "gsm8k"), ("eval", "lm_eval"), ("eval", "heldout"),
                        ("export", "gguf"), ("export", "ollama"), ("export", "merged")):
        fields = [f.name for f in dataclasses.fields(reg.step(group, name).config_class)]
        assert not [f for f in fields if SECRET.search(f)], (name, fields)
