"""``python -m core.migrate --from axolotl|torchtune FILE [--name NAME | --out FILE]``: an engine's own config as an
anytune job.

Writes a Hydra experiment file (``conf/experiment/NAME.yaml``, run with ``python -m core +experiment=NAME``; or the
file ``--out`` names) and lists every key of the source: *mapped* to a canonical field, passed through as
``backend.native`` (the same engine still gets it), *no equivalent* (with what to do instead), or *empty* (no
value). Nothing is dropped silently. The source is read as plain YAML; no engine is imported. Each backend that
migrates declares how (``Trainer.migrate``: ``plugins/axolotl/migrate.py``, ``plugins/torchtune/migrate.py``,
inverting its translation): the migrated job planned on the same backend writes every mapped key as the source
had it (``tests/test_migrate.py``).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from core.config import flatten

MAPPED, NATIVE, NONE, EMPTY = "mapped", "native", "no equivalent", "empty"
"""What became of a source key."""
DATA_HINT = "anytune trains on local files: convert the data set to .jsonl and set data.train=FILE (docs/data.md)"
"""What became of a source's data set (``data.train`` stays a path to give: :func:`data_placeholder`)."""


@dataclass
class Entry:
    """One source key and what became of it."""

    key: str
    """Dotted path in the source config."""
    value: Any
    status: str
    """mapped, native, no equivalent or empty."""
    target: str = ""
    """The canonical field(s) it set, or ``backend.native.<key>``."""
    note: str = ""
    """Why, or where the planned native config writes it when not under the same key."""
    same_key: bool = True
    """The job planned on the same backend writes this key with this value (``False``: see ``note``)."""


@dataclass
class Migration:
    """An engine config as an anytune job."""

    engine: str
    source: str
    entries: list[Entry] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    """Canonical dotted field -> value."""
    groups: dict[str, str] = field(default_factory=dict)
    """Config groups chosen (backend, method)."""
    native: dict[str, Any] = field(default_factory=dict)
    """``backend.native`` (nested as the engine reads it)."""

    def add(self, key: str, value: Any, status: str, target: str = "", note: str = "", same_key: bool = True) -> None:
        self.entries.append(Entry(key, value, status, target, note, same_key))

    def set(self, key: str, value: Any, canonical: str, converted: Any, note: str = "", same_key: bool = True) -> None:
        """A mapped key: ``canonical`` takes ``converted``."""
        self.fields[canonical] = converted
        self.add(key, value, MAPPED, f"{canonical}={converted}", note, same_key)

    def pass_native(self, key: str, value: Any, note: str = "") -> None:
        """A key passed through as ``backend.native`` (an interpolation kept for the engine to resolve)."""
        kept = value
        if isinstance(value, str) and "${" in value:
            kept = value.replace("${", "\\${")
            note = note or "the interpolation is left for the engine to resolve"
        put(self.native, key, kept)
        self.add(key, value, NATIVE, f"backend.native.{key}", note)

    def overrides(self) -> list[str]:
        """The job as ``python -m core`` command-line overrides."""
        from core.config import quote

        out = [f"{g}={v}" for g, v in self.groups.items()]
        for k, v in self.fields.items():
            out.append(f"{k}={override_value(v)}")
        for k, v in flatten(self.native).items():
            out.append(f"+backend.native.{k}={override_value(v)}" if not isinstance(v, str) or v
                       else f"+backend.native.{k}={quote(v)}")
        return out

    def experiment(self, name: str) -> str:
        """The job as a Hydra experiment file, headed by the command that runs it and the key-by-key report."""
        from omegaconf import OmegaConf

        body: dict[str, Any] = {}
        for k, v in self.fields.items():
            put(body, k, v)
        if self.native:
            body.setdefault("backend", {})["native"] = self.native
        lines = ["# @package _global_", f"# python -m core +experiment={name}   (a file elsewhere: add "
                 "'hydra.searchpath=[file://DIR]', DIR holding experiment/)",
                 f"# Migrated from {self.engine} config {self.source} by python -m core.migrate;",
                 "# what became of each key:"]
        for e in self.entries:
            target = f" -> {e.target}" if e.target else ""
            lines.append(f"#   {e.key}: {e.status}{target}" + (f"  ({e.note})" if e.note else ""))
        defaults = [f"  - override /{g}: {v}" for g, v in self.groups.items()]
        text = OmegaConf.to_yaml(OmegaConf.create(body))
        return "\n".join(lines + ["defaults:", *defaults, "  - _self_", ""]) + text

    def table(self):
        """The key-by-key report as a rich table."""
        from rich.table import Table

        tab = Table(title=f"{self.engine} {self.source}", title_justify="left")
        for col in ("key", "value", "became", "note"):
            tab.add_column(col, overflow="fold")
        colour = {MAPPED: "green", NATIVE: "cyan", NONE: "yellow", EMPTY: "dim"}
        for e in self.entries:
            tab.add_row(e.key, short(e.value), f"[{colour[e.status]}]{e.status}[/] {e.target}", e.note)
        return tab


def short(value: Any, width: int = 60) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def override_value(v: Any) -> str:
    """A value in Hydra's override grammar."""
    import json

    from core.config import quote

    if isinstance(v, str) and "\\${" in v:  # an escaped interpolation: Hydra reads its one backslash as is
        return "'" + v.replace("'", "\\'") + "'"
    if isinstance(v, str):
        return quote(v)
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "[" + ",".join(override_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{override_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(v)


def put(d: dict, dotted: str, value: Any) -> None:
    """Set ``dotted`` (``a.b.c``) in the nested dict ``d``, making the dicts on the way (:func:`flatten`'s inverse)."""
    *parents, leaf = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[leaf] = value


def load(path: Path) -> dict[str, Any]:
    """The source config as plain data, interpolations (torchtune's ``${output_dir}``) left as written."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def data_placeholder(names: list[str]) -> str:
    """``data.train`` of a migrated job whose source read hub data sets: a path that does not exist and says what to
    do, so the job stops at validation until it is given (``data.train=FILE``)."""
    return f"SET data.train=FILE (the source read {', '.join(names) or 'a data set'})"


def empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def migrators() -> dict[str, Callable[[dict, str], Migration]]:
    """Backends that migrate their engine's own config (``Trainer.migrate``): name -> the function."""
    from core import plugins

    return {name: cls.migrate for name, cls in sorted(plugins.registry().backends.items())
            if getattr(cls, "migrate", None) is not None}


def migrate(engine: str, path: Path) -> Migration:
    """``path`` (an ``engine`` config) as an anytune job."""
    from core.errors import ConfigError

    found = migrators()
    if engine not in found:
        raise ConfigError(f"--from {engine}: the installed backends migrate from {', '.join(found) or 'nothing'}")
    cfg = load(Path(path))
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} is not a YAML mapping")
    return found[engine](cfg, str(path))


def main(argv: list[str] | None = None) -> int:
    """Write the experiment file and print the key-by-key report; exit 2 for a wrong command line."""
    parser = argparse.ArgumentParser(prog="python -m core.migrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="engine", required=True, help="the engine: axolotl, torchtune (every "
                        "installed backend that migrates)")
    parser.add_argument("file", type=Path)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--name", help="experiment name (default: the file's stem): conf/experiment/NAME.yaml")
    where.add_argument("--out", type=Path, help="write the experiment file here instead")
    args = parser.parse_args(argv)
    from rich.console import Console

    from core import progress
    from core.errors import AnytuneError

    try:
        mig = migrate(args.engine, args.file)
    except (AnytuneError, OSError) as exc:
        progress.error(str(exc))
        return 2
    name = args.name or args.file.stem.replace(".", "_")
    out = args.out or Path(__import__("conf").__file__).parent / "experiment" / f"{name}.yaml"
    if args.out:
        name = out.stem
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(mig.experiment(name))
    console = Console()
    console.print(mig.table())
    counts = {s: sum(e.status == s for e in mig.entries) for s in (MAPPED, NATIVE, NONE, EMPTY)}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items()) + f"\nwrote {out}")
    if not args.out:
        run = f"python -m core +experiment={name}"
    elif out.parent.name == "experiment":  # Hydra finds experiment/NAME.yaml under a search-path folder
        run = f"python -m core 'hydra.searchpath=[file://{out.parent.parent.resolve()}]' +experiment={name}"
    else:
        home = out.parent.resolve()
        run = (f"mkdir -p {home}/experiment && mv {out.resolve()} {home}/experiment/ && "
               f"python -m core 'hydra.searchpath=[file://{home}]' +experiment={name}")
    console.print(f"run: {run}" + ("  data.train=FILE" if str(mig.fields.get("data.train", "")).startswith("SET ")
                                   else ""),
                  highlight=False, markup=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
