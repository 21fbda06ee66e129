"""anytune: one fine-tuning config, any engine.

Plugin authors need only ``core.hookimpl``, ``core.Backend``, ``core.Capabilities``,
``core.Plan`` and ``core.BackendConfig``.
"""
import pluggy

from core.backend import Backend, Capabilities, Plan
from core.schema import BackendConfig

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("anytune")
"""Marker for hook implementations: ``@core.hookimpl``."""

__all__ = ["Backend", "BackendConfig", "Capabilities", "Plan", "hookimpl", "__version__"]
