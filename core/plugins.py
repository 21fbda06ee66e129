"""Plugin loading: one entry-point group, ``anytune``; built-ins load like third parties.

``ANYTUNE_DISABLE_PLUGINS=a,b`` skips named entry points; ``ANYTUNE_PLUGINS_AUTOLOAD=0``
loads none (tests use this to ignore plugins installed in a developer's environment).
Lifecycle hooks are broadcast with :func:`notify`, which isolates each observer.
"""
from __future__ import annotations

import importlib.metadata
import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

import pluggy

from core import hookspecs
from core.errors import AnytuneError, ConfigError, did_you_mean
from core.schema import STEP_GROUPS
from core.step import KINDS, Step

GROUP = "anytune"
"""The entry-point group every plugin, built-in or third-party, registers under."""

FIRST_PARTY = {
    "trl": "pip install 'anytune[trl]'",
    "torchtune": "pip install anytune (its own environment is created on first use)",
    "unsloth": "pip install anytune (its own environment is created on first use; NVIDIA GPU only)",
    "axolotl": "pip install anytune (its own environment is created on first use)",
    "openai": "pip install 'anytune[openai]'",
}
"""First-party backends and how to get each, for the message about a backend that is not installed."""

HOOKS = {"backend": "register_backends", "export": "register_exporters", "eval": "register_evaluators"}
"""Registration hook of each step group."""


@dataclass
class Registry:
    """Everything the loaded plugins registered."""

    pm: pluggy.PluginManager
    backends: dict[str, type[Step]] = field(default_factory=dict)
    """Trainers by name (group ``backend``)."""
    exporters: dict[str, type[Step]] = field(default_factory=dict)
    """Exporters by name (group ``export``)."""
    evaluators: dict[str, type[Step]] = field(default_factory=dict)
    """Evaluators by name (group ``eval``)."""
    broken: dict[str, str] = field(default_factory=dict)
    """Entry points that failed to load: name -> one-line reason."""
    sources: dict[str, str] = field(default_factory=dict)
    """``group/name`` -> distribution (or module) it came from."""
    reported: set = field(default_factory=set)
    """Lifecycle hook implementations that raised, reported once each."""

    def group(self, group: str) -> dict[str, type[Step]]:
        """The steps of one config group (backend, export, eval)."""
        return {"backend": self.backends, "export": self.exporters, "eval": self.evaluators}[group]

    def step(self, group: str, name: str) -> type[Step]:
        """The step class ``name`` of ``group``; a clear error lists the installed ones (and install lines)."""
        table = self.group(group)
        if name in table:
            return table[name]
        installed = ", ".join(sorted(table)) or "none"
        if group != "backend":
            raise ConfigError(f"no {STEP_GROUPS[group]} '{name}'{did_you_mean(name, list(table))}; installed "
                              f"{STEP_GROUPS[group]}s: {installed}")
        lines = [f"no backend '{name}'{did_you_mean(name, list(table))} is installed; installed backends: {installed}"]
        missing = {n: how for n, how in FIRST_PARTY.items() if n not in table}
        if missing:
            lines.append("first-party backends not installed here:")
            lines += [f"  {n}: {how}" for n, how in missing.items()]
        if self.broken:
            lines.append(f"plugins that failed to load: {', '.join(f'{n} ({e})' for n, e in self.broken.items())}")
        lines.append("third-party backends are pip packages registering under the 'anytune' entry-point group "
                     "(python -m core.backends lists what is installed)")
        raise ConfigError("\n".join(lines))

    def backend(self, name: str) -> type[Step]:
        """The trainer called ``name`` (see :meth:`step`)."""
        return self.step("backend", name)


def _register_into(reg: Registry, group: str, source: str):
    kind = STEP_GROUPS[group]

    def register(cls: type) -> None:
        name = getattr(cls, "name", None)
        if not name:
            raise AnytuneError(f"{source} registered a {kind} without a name: {cls!r}")
        if not (isinstance(cls, type) and issubclass(cls, KINDS[kind])):
            raise AnytuneError(f"{source} registered {cls!r} as a {kind}; it must subclass core.{KINDS[kind].__name__}")
        reg.group(group)[name] = cls
        reg.sources[f"{group}/{name}"] = source
    return register


_registry: Registry | None = None


def load(extra: list[object] = (), autoload: bool | None = None) -> Registry:
    """Load plugins from entry points (and ``extra`` plugin objects) and store their configs in Hydra's ConfigStore."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    reg = Registry(pm)
    if autoload is None:
        autoload = os.environ.get("ANYTUNE_PLUGINS_AUTOLOAD", "1") != "0"
    disabled = {n.strip() for n in os.environ.get("ANYTUNE_DISABLE_PLUGINS", "").split(",") if n.strip()}
    plugins: list[tuple[str, str, object]] = []
    if autoload:
        for ep in importlib.metadata.entry_points(group=GROUP):
            if ep.name in disabled or pm.is_registered(ep.name) or any(n == ep.name for n, _, _ in plugins):
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
    pm.check_pending()
    for group, hook in HOOKS.items():
        for impl in getattr(pm.hook, hook).get_hookimpls():
            source = next((s for n, s, o in plugins if o is impl.plugin), impl.plugin_name)
            try:
                impl.function(register=_register_into(reg, group, source))
            except Exception as exc:  # one plugin's failure leaves the others registered
                reg.broken[impl.plugin_name] = f"{type(exc).__name__}: {exc}"
    _store_configs(reg)
    return reg


def _store_configs(reg: Registry) -> None:
    """Each step's config node in Hydra's ConfigStore: ``backend/<name>``; ``export/<name>`` at ``export.<name>``."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group in HOOKS:
        for name, cls in reg.group(group).items():
            package = None if group == "backend" else f"{group}.{name}"
            cs.store(group=group, name=name, node=cls.config_class(name=name), package=package)


def notify(reg: Registry, hook: str, **kwargs: Any) -> None:
    """Broadcast a lifecycle hook; an observer that raises is reported once (by plugin name) and skipped,
    so no observer can break a job or leave its engine running."""
    for impl in getattr(reg.pm.hook, hook).get_hookimpls():
        try:
            impl.function(*[kwargs[a] for a in impl.argnames])
        except Exception as exc:
            key = (impl.plugin_name, hook)
            if key not in reg.reported:
                reg.reported.add(key)
                print(f"anytune: plugin '{impl.plugin_name}' raised in {hook} ({type(exc).__name__}: {exc}); "
                      "the job goes on without it (reported once)", file=sys.stderr)


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
