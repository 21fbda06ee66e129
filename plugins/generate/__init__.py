"""Generation evaluators: greedy answers with the chat template of record, extracted and compared.

``eval=[generate]`` is the generic one (exact match, optionally after a regex extraction; rows from the run's
``data/eval.jsonl`` or any JSONL file); ``eval=[gsm8k]`` is the same scorer set up for GSM8K's test rows.
Registered through the ``anytune`` entry-point group like any third-party step. ``step.py`` holds the classes and
config nodes, ``worker.py`` what runs in the child process (transformers, peft, torch and the standard library).
"""
import core
from plugins.generate.step import GenerateEvaluator, Gsm8kEvaluator


@core.hookimpl
def register_evaluators(register):
    """Register the generic generation evaluator and its GSM8K preset."""
    register(GenerateEvaluator)
    register(Gsm8kEvaluator)
