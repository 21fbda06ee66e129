"""anytune: one fine-tuning config, any engine.

This module is the whole API a plugin may use (``docs/writing-a-backend.md``):

- ``hookimpl``: marks hook implementations (``@core.hookimpl``; hooks in ``core/hookspecs.py``);
- ``Trainer``, ``Exporter``, ``Evaluator``: the step kinds a plugin subclasses (``core/step.py``);
- ``Plan``, ``Context``, ``DataInfo``: what ``plan(ctx)`` receives and returns;
- ``Capabilities``, ``fields``: what a step supports, reads and needs (``core/capabilities.py``);
- ``StepConfig``, ``BackendConfig``: bases of a step's config node; ``choice``, ``number``: fields with
  allowed values or a range, checked before anything runs (``core/schema.py``);
- ``ConfigError``: the error ``check()`` raises for a job the step cannot run (``AnytuneError``: the base of
  every anytune error a user sees without a traceback); ``did_you_mean``: the close match for a misspelt name;
- ``runproto``, ``lossmask``, ``chatrender``, ``scores``: standard-library modules a plan ships to its worker
  (``scores``: the one schema of ``eval.json``);
- ``extra_requirements``: the pins of one of anytune's extras (a first-party step's ``environment``).

Anything else in ``core`` is internal and may change.
"""
import pluggy

from core import chatrender, lossmask, runproto, scores
from core.capabilities import Capabilities, fields
from core.envs import extra_requirements
from core.errors import AnytuneError, ConfigError, did_you_mean
from core.schema import BackendConfig, StepConfig, choice, number
from core.step import Context, DataInfo, Evaluator, Exporter, Plan, Step, Trainer

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("anytune")
"""Marker for hook implementations: ``@core.hookimpl``."""

__all__ = ["AnytuneError", "BackendConfig", "Capabilities", "ConfigError", "Context", "DataInfo", "Evaluator",
           "Exporter", "Plan", "Step", "StepConfig", "Trainer", "chatrender", "choice", "did_you_mean",
           "extra_requirements", "fields", "hookimpl", "lossmask", "number", "runproto", "scores",
           "__version__"]
