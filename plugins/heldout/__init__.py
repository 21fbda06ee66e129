"""The held-out evaluator: mean loss over loss tokens on ``data/eval.jsonl``, one scorer for every engine.

Registered through the ``anytune`` entry-point group like any third-party step.
``step.py`` holds the class and its config node, ``worker.py`` the scorer that runs
in the child process (transformers, peft, torch, the standard library and ``lossmask``).
"""
import core
from plugins.heldout.step import HeldoutEvaluator


@core.hookimpl
def register_evaluators(register):
    """Register the held-out evaluator."""
    register(HeldoutEvaluator)
