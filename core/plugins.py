"""Plugin loading: one entry-point group, ``anytune``; built-ins load like third parties.

``ANYTUNE_DISABLE_PLUGINS=a,b`` skips named entry points; ``ANYTUNE_PLUGINS_AUTOLOAD=0``
loads none (tests use this to ignore plugins installed in a developer's environment).
"""
from __future__ import annotations

import importlib.metadata
import os
import sys
import traceback
from dataclasses import dataclass, field

import pluggy

from core import hookspecs
from core.backend import Backend
from core.errors import AnytuneError, did_you_mean

GROUP = "anytune"


@dataclass
class Registry:
    """Everything the loaded plugins registered."""

    pm: pluggy.PluginManager
    backends: dict[str, type[Backend]] = field(default_factory=dict)
    exporters: dict[str, type] = field(default_factory=dict)
    evaluators: dict[str, type] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)
    """Entry points that failed to load: name -> one-line reason."""
    sources: dict[str, str] = field(default_factory=dict)
    """Backend name -> distribution (or module) it came from."""

    def backend(self, name: str) -> type[Backend]:
        """The backend class called ``name``; a clear error lists the installed ones."""
        if name not in self.backends:
            hint = did_you_mean(name, list(self.backends))
            broken = f"; failed to load: {', '.join(self.broken)}" if self.broken else ""
            raise AnytuneError(f"no backend '{name}'{hint}; installed: {', '.join(sorted(self.backends)) or 'none'}"
                               f"{broken}. Install one with pip install 'anytune[{name}]' or a plugin package.")
        return self.backends[name]


_registry: Registry | None = None


def _register_into(table: dict, kind: str, source: str, sources: dict | None = None):
    def register(cls: type) -> None:
        name = getattr(cls, "name", None)
        if not name:
            raise AnytuneError(f"{source} registered a {kind} without a name: {cls!r}")
        table[name] = cls
        if sources is not None:
            sources[name] = source
    return register


def load(extra: list[object] = (), autoload: bool | None = None) -> Registry:
    """Load plugins from entry points (and ``extra`` plugin objects) and register their configs."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    reg = Registry(pm)
    if autoload is None:
        autoload = os.environ.get("ANYTUNE_PLUGINS_AUTOLOAD", "1") != "0"
    disabled = {n.strip() for n in os.environ.get("ANYTUNE_DISABLE_PLUGINS", "").split(",") if n.strip()}
    plugins: list[tuple[str, str, object]] = []
    if autoload:
        for ep in importlib.metadata.entry_points(group=GROUP):
            if ep.name in disabled or pm.is_registered(ep.name):
                continue
            try:
                plugins.append((ep.name, ep.dist.name if ep.dist else ep.value, ep.load()))
            except Exception as exc:  # a broken plugin must not break the others
                reg.broken[ep.name] = f"{type(exc).__name__}: {exc}"
                if os.environ.get("ANYTUNE_DEBUG"):
                    traceback.print_exc()
                print(f"anytune: plugin '{ep.name}' failed to load ({reg.broken[ep.name]}); skipped",
                      file=sys.stderr)
    for i, obj in enumerate(extra):
        plugins.append((getattr(obj, "__name__", f"extra-{i}"), "extra", obj))
    for name, source, obj in plugins:
        try:
            pm.register(obj, name=name)
        except Exception as exc:
            reg.broken[name] = f"{type(exc).__name__}: {exc}"
            continue
    pm.check_pending()
    for hook, table, kind in ((pm.hook.register_backends, reg.backends, "backend"),
                              (pm.hook.register_exporters, reg.exporters, "exporter"),
                              (pm.hook.register_evaluators, reg.evaluators, "evaluator")):
        for impl in hook.get_hookimpls():
            source = next((s for n, s, o in plugins if o is impl.plugin), impl.plugin_name)
            try:
                impl.function(register=_register_into(table, kind, source,
                                                      reg.sources if kind == "backend" else None))
            except Exception as exc:  # one plugin's failure leaves the others registered
                reg.broken[impl.plugin_name] = f"{type(exc).__name__}: {exc}"
    _store_configs(reg)
    return reg


def _store_configs(reg: Registry) -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name, cls in reg.backends.items():
        cs.store(group="backend", name=name, node=cls.config_class(name=name))


def registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _registry
    if _registry is None:
        _registry = load()
    return _registry


def reset(extra: list[object] = (), autoload: bool | None = None) -> Registry:
    """Reload plugins (tests)."""
    global _registry
    _registry = load(extra, autoload)
    return _registry
