"""lm-evaluation-harness evaluator worker: ``lm_eval.simple_evaluate`` on the trained model, scores in one schema.

Usage (from the run directory): ``python plan/eval-lm_eval/lm_eval_worker.py plan/eval-lm_eval/lm_eval.json``.
Imports only lm-eval, transformers, peft, torch and the standard library (plus ``heldout_worker``, ``hfglue``,
``runproto``, ``lossmask`` and ``scores``, shipped beside this file). The model is loaded here (the adapter on its
base, as every anytune evaluator loads it) and handed to the harness's ``HFLM``. The harness's whole result goes
to ``artifacts/eval/lm_eval.json``; each task's metrics to the outcome's scores. Exits 0, 1 or 130.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import heldout_worker  # noqa: E402
import hfglue  # noqa: E402
import runproto  # noqa: E402
import scores  # noqa: E402


def task_manager(spec):
    """The harness's TaskManager with the include folder and the folders of task files registered."""
    from lm_eval.tasks import TaskManager

    paths = [spec["include_path"]] if spec["include_path"] else []
    paths += sorted({os.path.dirname(t) for t in spec["tasks"] if t.endswith((".yaml", ".yml"))})
    return TaskManager(include_path=paths or None)


def task_names(spec):
    """Task names: a task file's ``task:`` field (simple YAML, read without a YAML library), else the name."""
    out = []
    for t in spec["tasks"]:
        if t.endswith((".yaml", ".yml")):
            with open(t, encoding="utf-8") as f:
                name = next((line.split(":", 1)[1].strip().strip("'\"") for line in f
                             if line.startswith("task:")), None)
            if not name:
                raise ValueError(f"{t} has no 'task:' line")
            out.append(name)
        else:
            out.append(t)
    return out


def to_scores(results, version):
    """``<task>/<metric>`` -> score, from the harness's ``results`` (``acc,none`` and ``acc_stderr,none``)."""
    out = {}
    for task, metrics in results["results"].items():
        n = (results.get("n-samples") or {}).get(task, {}).get("effective")
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metric, flt = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{flt}")
            name = f"{task}/{metric}" + ("" if flt == "none" else f"[{flt}]")
            out[name] = scores.score(value, n or 0, "lm-eval", version,
                                     stderr if isinstance(stderr, (int, float)) else None)
    return out


def evaluate(spec):
    """Run the harness; write its result; the scores."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    device = heldout_worker.device_of(spec)
    tokenizer = hfglue.load_tokenizer(spec["base"], spec["template"], spec["trust_remote_code"], pad=True)
    model = heldout_worker.load_model(spec, device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=spec["batch_size"], device=device)
    results = lm_eval.simple_evaluate(
        model=lm, tasks=task_names(spec), num_fewshot=spec["num_fewshot"], limit=spec["limit"],
        task_manager=task_manager(spec), apply_chat_template=spec["chat_template"], log_samples=False,
        random_seed=spec["seed"], numpy_random_seed=spec["seed"], torch_random_seed=spec["seed"],
        fewshot_random_seed=spec["seed"])
    version = getattr(lm_eval, "__version__", None) or runproto.versions("lm-eval").get("lm-eval", "?")
    os.makedirs(os.path.dirname(spec["out"]), exist_ok=True)
    runproto.atomic_write_text(spec["out"], json.dumps({k: results[k] for k in ("results", "configs", "versions",
                                                                              "n-samples") if k in results},
                                                     indent=2, default=str))
    out = to_scores(results, version)
    if not out:
        raise ValueError(f"the harness returned no metric for {spec['tasks']}")
    return out


def main(argv):
    """Evaluate as ``argv[1]`` says; record the scores; exit 0, 1 (failed) or 130 (interrupted)."""
    spec = runproto.read_json(argv[1])
    outcome = runproto.Outcome(("lm-eval", "transformers", "peft", "torch"))
    with outcome as out:
        out["scores"] = evaluate(spec)
        out["artifacts"] = {"eval_lm_eval": runproto.local_artifact(spec["out"])}
    return outcome.code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
