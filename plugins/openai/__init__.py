"""The OpenAI backend: fine-tuning through the OpenAI API (files + fine-tuning jobs) or a service that speaks it.

Registered through the ``anytune`` entry-point group like any third-party backend.
``backend.py`` holds the class and its config node, ``translate.py`` the pure translation into the API's
line formats and job request, ``prices.py`` the dated price table, ``tokens.py`` the offline token counts,
``worker.py`` what runs in the child process (the ``openai`` client), ``evaluator.py`` the chat-completions
evaluator, ``__main__.py`` the attach / cancel / status commands. No module here imports ``openai`` at
plugin import.
"""
import core
from plugins.openai.backend import OpenAIBackend
from plugins.openai.evaluator import OpenAIEvaluator


@core.hookimpl
def register_backends(register):
    """Register the OpenAI backend."""
    register(OpenAIBackend)


@core.hookimpl
def register_evaluators(register):
    """Register the OpenAI chat-completions evaluator."""
    register(OpenAIEvaluator)
