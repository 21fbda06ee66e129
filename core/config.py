"""Composition glue: the schema in Hydra's ConfigStore, resolvers, and friendly config errors."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from core.errors import ConfigError
from core.schema import BackendConfig, JobConfig, SECTIONS

ASSETS = Path(__file__).parent / "assets"
SECRET = re.compile(r"api[_-]?key|secret|password|passwd|credential|"
                    r"(?:^|\.)(?:hub_|hf_|api_|access_|auth_|bearer_|github_|wandb_)?token$", re.I)
"""Keys whose values are secrets: ``*api_key*``, ``*secret*``, ``*password*``, ``*credential*``, and a token
by name (``token``, ``hub_token``, ``hf_token``, ``access_token`` ...), not every key that mentions tokens
(``max_new_tokens``, ``eos_token``, ``pre_tokenizer`` are settings)."""
_registered = False


def asset(name: str) -> str:
    """Absolute path of a file or folder shipped in core/assets (``${anytune_asset:tiny-llama}``)."""
    path = ASSETS / name
    if not path.exists():
        raise ConfigError(f"no shipped asset '{name}' (looked in {ASSETS})")
    return str(path)


def register() -> None:
    """Store the job schema as ``anytune`` in the ConfigStore and register resolvers (idempotent)."""
    global _registered
    if _registered:
        return
    ConfigStore.instance().store(name="anytune", node=JobConfig)
    OmegaConf.register_new_resolver("anytune_asset", asset, replace=True)
    _registered = True


def fields_of(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


#: Open mappings: ``backend.native.X=v`` and ``data.columns.X=v`` add keys without Hydra's ``+``.
OPEN_MAPPINGS = ("backend.native.", "data.columns.")


def open_mappings(argv: list[str]) -> list[str]:
    """Prefix overrides of keys inside open mappings with ``++`` so they may add new keys."""
    def is_open(arg: str) -> bool:
        key = arg.split("=", 1)[0]
        return "=" in arg and (key.startswith(OPEN_MAPPINGS) or f"{key}." in OPEN_MAPPINGS)

    return [f"++{a}" if is_open(a) else a for a in argv]


def _values(override) -> list:
    """The plain value(s) of a parsed override: one, or each of a sweep (``-m backend=trl,torchtune``)."""
    if override.is_sweep_override():
        return [v for v in override.sweep_iterator()]
    return [override.value()]


def _names(value) -> list[str]:
    """Option names of a group value: ``merged`` or ``[merged, gguf]``."""
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [] if value is None else [str(value)]


def check_overrides(overrides: list[str], reg) -> None:
    """Reject unknown keys and uninstalled steps on the command line, before Hydra runs.

    ``train.lr=1`` names the allowed fields; ``backend=axolotl`` names the installed backends and how
    to get first-party ones; ``export=[mergd]`` names the installed exporters.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from core.schema import STEP_GROUPS

    try:
        parsed = OverridesParser.create().parse_overrides([o for o in overrides if not o.startswith("-")])
    except Exception:
        return  # let Hydra report syntax errors
    chosen: dict[str, list[str]] = {"backend": ["trl"], "export": [], "eval": []}
    for o in parsed:
        if o.key_or_group in STEP_GROUPS and not o.package and not o.is_delete():
            names = [n for v in _values(o) for n in _names(v)]
            for name in names:
                reg.step(o.key_or_group, name)  # raises the helpful error
            chosen[o.key_or_group] = names
    top = fields_of(JobConfig)
    for o in parsed:
        key = o.key_or_group
        if o.is_add() or o.is_force_add() or key.startswith("hydra") or o.package:
            continue
        parts = key.split(".")
        if parts[0] not in top:
            raise ConfigError.unknown_key(key, list(top))
        if len(parts) == 1:
            continue
        if parts[0] == "backend":
            if parts[1] == "native":
                continue
            classes = [reg.backends[n].config_class for n in chosen["backend"] if n in reg.backends]
            cls = classes[0] if classes else BackendConfig
        elif parts[0] in STEP_GROUPS:
            if parts[1] not in chosen[parts[0]]:
                raise ConfigError(f"{key}: {parts[1]} is not selected; add it: {parts[0]}=[{parts[1]}]")
            if len(parts) == 2:
                continue
            cls, parts = reg.step(parts[0], parts[1]).config_class, [f"{parts[0]}.{parts[1]}", *parts[2:]]
        elif parts[0] in SECTIONS:
            cls = SECTIONS[parts[0]]
        else:
            raise ConfigError(f"'{parts[0]}' has no fields: use {parts[0]}=<value>")
        allowed = fields_of(cls)
        if parts[1] not in allowed:
            raise ConfigError.unknown_key(key, list(allowed), prefix=f"{parts[0]}.")


def compose(overrides: list[str], hydra: bool = False) -> DictConfig:
    """The job Hydra composes for ``python -m core <overrides>`` (plugins loaded, schema registered).

    :param hydra: include the ``hydra`` node (run and sweep directories ...).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from core import plugins

    plugins.registry()
    register()
    with initialize_config_module("conf", version_base="1.3"):
        return hydra_compose("config", overrides=open_mappings(list(overrides)), return_hydra_config=hydra)


def flatten(d: dict, prefix: str = "", empty_leaves: bool = True) -> dict[str, Any]:
    """Nested dict -> dotted leaves (``{"train.learning_rate": 0.0002, ...}``; lists are leaves).

    :param empty_leaves: an empty dict is a leaf of its own; False: it leaves nothing.
    """
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and (v or not empty_leaves):
            out.update(flatten(v, key + ".", empty_leaves))
        else:
            out[key] = v
    return out


def quote(value: str) -> str:
    """``value`` quoted for Hydra's override grammar (single quotes, escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def shell(arg: str) -> str:
    """``arg`` in single quotes for a POSIX shell (``shlex.quote``, kept readable when it has none)."""
    import shlex

    return f"'{arg}'" if "'" not in arg else shlex.quote(arg)


def check_syntax(overrides: list[str]) -> None:
    """Every override parses in Hydra's grammar; a value it cannot read (a path with ``~``, parentheses,
    brackets) gets the quoted form to type instead of Hydra's lexer error."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for arg in overrides:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            parser.parse_overrides([arg])
        except Exception:
            key, value = arg.split("=", 1)
            quoted = f'{key}="{value}"' if '"' not in value else f"{key}='{value}'"
            raise ConfigError(f"cannot read the value of {key}: {value!r} holds characters Hydra's command-line "
                              f"grammar gives a meaning to (~ ( ) [ ] {{ }} , = and quotes); quote it for Hydra "
                              f"inside quotes for the shell:\n    python -m core {shell(quoted)}") from None


def split_secrets(cfg: DictConfig) -> dict[str, str]:
    """Move every secret-looking value of the step nodes (``backend``, ``export.*``, ``eval.*``) out of ``cfg``.

    Each becomes the literal ``${oc.env:ANYTUNE_SECRET_<KEY>}`` (what plans hold; workers and torchtune's
    OmegaConf resolve it from their environment) and is returned as ``{variable: value}`` for the core to
    put into the step's process environment only. No secret reaches a file of the run directory.
    """
    from core.runproto import SECRET_PREFIX

    out: dict[str, str] = {}

    def walk(node: DictConfig) -> None:
        for key in list(node.keys()):
            value = node[key]
            if isinstance(value, DictConfig):
                walk(value)
            elif SECRET.search(str(key)) and isinstance(value, str) and value and not value.startswith("${"):
                name = SECRET_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", str(key)).upper()
                out[name] = value
                node[key] = "\\${oc.env:" + name + "}"

    for group in ("backend", "export", "eval"):
        if OmegaConf.select(cfg, group) is not None:
            walk(cfg[group])
    return out


def redacted(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as a plain dict, values of secret-looking keys replaced."""
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: ("***" if SECRET.search(str(k)) and v not in (None, "") else walk(v))
                    for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(OmegaConf.to_container(cfg, resolve=True))
