"""The one schema of ``eval.json``: every evaluator's scores, the same shape whichever engine trained the model.

``eval.json`` maps evaluator name -> metric name -> one score::

    {"heldout": {"loss": {"value": 1.84, "stderr": null, "n": 412, "scorer": "anytune.heldout", "version": "1"}},
     "gsm8k":   {"exact_match": {"value": 0.31, "stderr": 0.013, "n": 1319, "scorer": "anytune.generate",
                                 "version": "1"}}}

- ``value``: the metric (a number);
- ``stderr``: its standard error where the scorer has one (a mean over rows: the sample standard deviation
  over sqrt(n), as lm-evaluation-harness computes it), else null;
- ``n``: how many things were scored (rows, questions, loss tokens: the evaluator's docs say which);
- ``scorer`` and ``version``: what computed it (``anytune.<evaluator>`` and its scorer version, or an external
  harness and its own version), so scores are compared only when they were computed the same way.

Standard library only: evaluators' workers get this file shipped beside them (``plan/<step>/scores.py``).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

FIELDS = ("value", "stderr", "n", "scorer", "version")
"""The keys of one score, in order."""


def score(value: float, n: int, scorer: str, version: str, stderr: float | None = None) -> dict[str, Any]:
    """One score in the schema (``stderr`` None: the scorer has none)."""
    return {"value": float(value), "stderr": None if stderr is None else float(stderr), "n": int(n),
            "scorer": str(scorer), "version": str(version)}


def mean_score(values: Iterable[float], scorer: str, version: str) -> dict[str, Any]:
    """The mean of per-row values (0/1 for a match) with its standard error (sample std / sqrt(n))."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("no rows to score")
    mean = sum(xs) / n
    stderr = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1) / n) if n > 1 else None
    return score(mean, n, scorer, version, stderr)


def check(scores: Any) -> list[str]:
    """Problems with one evaluator's scores (metric -> score); an empty list means they follow the schema."""
    if not isinstance(scores, dict) or not scores:
        return [f"scores must be a non-empty object of metric -> score, not {scores!r}"]
    problems = []
    for metric, s in scores.items():
        if not isinstance(s, dict) or set(s) != set(FIELDS):
            problems.append(f"{metric}: keys must be {', '.join(FIELDS)}, not {sorted(s) if isinstance(s, dict) else s!r}")
            continue
        if not isinstance(s["value"], (int, float)) or isinstance(s["value"], bool):
            problems.append(f"{metric}: value must be a number")
        if s["stderr"] is not None and not isinstance(s["stderr"], (int, float)):
            problems.append(f"{metric}: stderr must be a number or null")
        if not isinstance(s["n"], int) or s["n"] < 0:
            problems.append(f"{metric}: n must be a count")
        if not (isinstance(s["scorer"], str) and s["scorer"] and isinstance(s["version"], str) and s["version"]):
            problems.append(f"{metric}: scorer and version must be non-empty strings")
    return problems
