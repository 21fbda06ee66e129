"""anytune: one fine-tuning config, any engine.

This module is the whole API a plugin may use (``docs/writing-a-backend.md``):

- ``hookimpl``: marks hook implementations (``@core.hookimpl``; hooks in ``core/hookspecs.py``);
- ``Trainer``, ``Exporter``, ``Evaluator``: the step kinds a plugin subclasses (``core/step.py``);
- ``Plan``, ``Context``, ``DataInfo``: what ``plan(ctx)`` receives and returns; ``MemoryProfile``: how a
  backend's engine spends GPU memory (``Trainer.memory``, for ``python -m core.estimate``);
- ``Capabilities``, ``fields``: what a step supports, reads and needs (``core/capabilities.py``);
- ``StepConfig``, ``BackendConfig``: bases of a step's config node; ``choice``, ``number``: fields with
  allowed values or a range, checked before anything runs (``core/schema.py``);
- ``ConfigError``: the error ``check()`` raises for a job the step cannot run (``AnytuneError``: the base of
  every anytune error a user sees without a traceback); ``did_you_mean``: the close match for a misspelt name;
- ``runproto``, ``lossmask``, ``chatrender``, ``scores``: standard-library modules a plan ships to its worker
  (``scores``: the one schema of ``eval.json``);
- ``extra_requirements``: the pins of one of anytune's extras (a first-party step's ``environment``); ``envs``:
  managed environments (``interpreter``, ``home``, ``wheels_dir``, ``flock``) for a step that builds its own;
- ``tokenizer_files``: a local directory with the model's tokenizer files (a hub id from its cache);
- ``migrate``: ``Migration``, what a backend's ``Trainer.migrate`` returns for ``python -m core.migrate``;
- ``labels``: the label view's rows (``label_rows``: the tokens and loss mask every engine trains on).

Anything else in ``core`` is internal and may change.
"""
import pluggy

from core import chatrender, envs, lossmask, runproto, scores
from core.launch import torchrun_args, world_size
from core.capabilities import Capabilities, fields
from core.envs import extra_requirements
from core.errors import AnytuneError, ConfigError, did_you_mean
from core.schema import BackendConfig, StepConfig, choice, number
from core.step import Context, DataInfo, Evaluator, Exporter, MemoryProfile, Plan, Step, Trainer


def tokenizer_files(name: str, offline: bool):
    """A local directory with the model's tokenizer files: the model's own directory, or a hub id's files from the
    hub cache (downloaded unless ``offline``); None when they cannot be had."""
    from core.runner import tokenizer_files as find

    return find(name, offline)


def flatten(d: dict, empty_leaves: bool = True) -> dict:
    """Nested dict -> dotted leaves (``core.config.flatten``: an empty dict is a leaf unless ``empty_leaves`` is
    False)."""
    from core.config import flatten as dotted

    return dotted(d, empty_leaves=empty_leaves)


def __getattr__(name: str):
    if name == "labels":  # the label view imports the data layer: loaded on first use only
        from core.data import labels

        return labels
    if name == "migrate":  # loaded on first use (and never before ``python -m core.migrate`` runs it)
        import importlib

        return importlib.import_module("core.migrate")
    raise AttributeError(name)

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("anytune")
"""Marker for hook implementations: ``@core.hookimpl``."""

__all__ = ["AnytuneError", "BackendConfig", "Capabilities", "ConfigError", "Context", "DataInfo", "Evaluator",
           "Exporter", "MemoryProfile", "Plan", "Step", "StepConfig", "Trainer", "chatrender", "choice", "did_you_mean",
           "envs", "extra_requirements", "fields", "flatten", "hookimpl", "labels", "lossmask", "migrate", "number", "runproto",
           "scores",
           "tokenizer_files", "torchrun_args", "world_size",
           "__version__"]
