"""anytune backend ``hf``: plain Hugging Face ``transformers.Trainer`` + ``peft``, SFT only.

A third-party backend in one package, and the template to copy. This module is what
the ``anytune`` entry point names, and it holds only the hook that registers the
backend. ``backend.py`` holds the class (name, capability table, ``plan``) and its
config node; ``translate.py`` the pure translation into ``plan/hf_args.json``;
``worker.py`` what runs in the engine's process.

Nothing here imports torch, transformers or peft: ``python -m core`` loads every
plugin at start-up, so engines are imported inside the worker only.
"""
import core

from anytune_hf.backend import HfBackend

__version__ = "0.1.0"


@core.hookimpl
def register_backends(register):
    """Register the ``hf`` backend with anytune."""
    register(HfBackend)
