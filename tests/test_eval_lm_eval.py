"""eval=[lm_eval]: EleutherAI's lm-evaluation-harness through simple_evaluate, offline, in its own environment.

Fast: refusals before anything loads, the plan, the mapping of the harness's result into eval.json's schema.
Slow: a TRL run scored on a local multiple-choice task (``dataset_path: json``) by the real harness in its
managed environment (created on first use: ~12 min on a fresh 2-core machine, seconds once cached).
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from core import runner, runproto, scores
from core.conformance import SMALL, compose

ROOT = Path(__file__).resolve().parents[1]


def job(*overrides: str):
    keys = {o.split("=", 1)[0] for o in overrides}
    return compose([o for o in SMALL if o.split("=", 1)[0] not in keys] + list(overrides))


def task(tmp: Path) -> Path:
    """A local multiple-choice task: 'What is a plus b?' with four numbers to choose from."""
    rows = [{"question": f"What is {a} plus {b}?", "choices": [str(a + b + d) for d in (0, 1, 2, 3)], "label": 0}
            for a, b in [(3, 4), (10, 5), (7, 8), (20, 1), (6, 6), (9, 2), (12, 30), (40, 2)]]
    (tmp / "arith.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp / "arith.yaml"
    path.write_text(f"""task: arith
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tmp / 'arith.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""")
    return path


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    d = tmp_path_factory.mktemp("plan")
    for src, name in (("plugins/lm_eval/worker.py", "lm_eval_worker.py"), ("plugins/heldout/worker.py",
                      "heldout_worker.py"), ("plugins/hftrainer/glue.py", "hfglue.py"), ("core/runproto.py", None),
                      ("core/lossmask.py", None), ("core/scores.py", None)):
        shutil.copy(ROOT / src, d / (name or Path(src).name))
    spec = importlib.util.spec_from_file_location("lm_eval_worker", d / "lm_eval_worker.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    sys.path.remove(str(d))


@pytest.mark.parametrize("overrides, words", [
    (["eval=[lm_eval]"], "needs tasks"),
    (["eval=[lm_eval]", "eval.lm_eval.tasks=[/nonexistent/t.yaml]"], "no such file"),
    (["eval=[lm_eval]", "eval.lm_eval.tasks=[hellaswag]", "eval.lm_eval.include_path=/nonexistent"], "no such folder"),
    (["eval=[lm_eval]", "eval.lm_eval.tasks=[hellaswag]", "eval.lm_eval.limit=0"], "eval.lm_eval.limit"),
], ids=["no-tasks", "task-file", "include-path", "limit"])
def test_refused_before_anything_runs(tmp_path, overrides, words):
    result = runner.run(job(*overrides), tmp_path)
    assert result["status"] == "failed" and words in result["error"], result.get("error")
    assert not (tmp_path / "data").exists()


def test_plan(tmp_path):
    path = task(tmp_path)
    result = runner.run(job("plan_only=true", "eval=[lm_eval]", f"eval.lm_eval.tasks=[{path}]",
                            "eval.lm_eval.limit=4"), tmp_path / "run")
    assert result["status"] == "planned", result.get("error")
    spec = json.loads((tmp_path / "run/plan/eval-lm_eval/lm_eval.json").read_text())
    assert spec["tasks"] == [str(path)] and spec["limit"] == 4 and spec["adapter"] == "artifacts/adapter"
    assert spec["template"] == "data/chat_template.jinja" and spec["out"] == "artifacts/eval/lm_eval.json"


def test_harness_results_in_the_schema(worker, tmp_path):
    results = {"results": {"arith": {"alias": "arith", "acc,none": 0.25, "acc_stderr,none": 0.16,
                                     "acc_norm,none": 0.5, "acc_norm_stderr,none": "N/A",
                                     "exact_match,strict-match": 1.0}},
               "n-samples": {"arith": {"original": 8, "effective": 8}}}
    out = worker.to_scores(results, "0.4.13")
    assert out == {"arith/acc": scores.score(0.25, 8, "lm-eval", "0.4.13", 0.16),
                   "arith/acc_norm": scores.score(0.5, 8, "lm-eval", "0.4.13"),
                   "arith/exact_match[strict-match]": scores.score(1.0, 8, "lm-eval", "0.4.13")}
    assert scores.check(out) == []
    assert worker.task_names({"tasks": [str(task(tmp_path)), "hellaswag"]}) == ["arith", "hellaswag"]


@pytest.mark.slow
def test_lm_eval_on_a_local_task(tmp_path):
    """The real harness in its environment scores the trained adapter on a local JSON task."""
    path = task(tmp_path)
    run_dir = tmp_path / "run"
    result = runner.run(job("eval=[lm_eval]", f"eval.lm_eval.tasks=[{path}]", "train.max_steps=2",
                            "eval.lm_eval.batch_size=4"), run_dir)
    assert result["status"] == "succeeded", result.get("error")
    evals = runproto.read_json(str(run_dir / "eval.json"))["lm_eval"]
    assert scores.check(evals) == [] and set(evals) == {"arith/acc", "arith/acc_norm"}
    acc = evals["arith/acc"]
    assert acc["n"] == 8 and 0 <= acc["value"] <= 1 and acc["scorer"] == "lm-eval" and acc["version"] == "0.4.13"
    assert acc["stderr"] is not None
    full = runproto.read_json(str(run_dir / "artifacts/eval/lm_eval.json"))
    assert full["results"]["arith"]["acc,none"] == acc["value"]
