"""The lm-evaluation-harness evaluator: EleutherAI's harness (0.4.x) through its Python API, in its own environment.

Registered through the ``anytune`` entry-point group like any third-party step. ``step.py`` holds the class and
its config node, ``worker.py`` what runs in the harness's environment (lm-eval, transformers, peft, torch).
"""
import core
from plugins.lm_eval.step import LmEvalEvaluator


@core.hookimpl
def register_evaluators(register):
    """Register the lm-evaluation-harness evaluator."""
    register(LmEvalEvaluator)
