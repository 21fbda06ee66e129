"""``python -m core.backends``: the installed backends, their engines and what they support; exporters, evaluators.

``--json`` prints the same as JSON; ``--matrix`` prints the markdown capability matrix.
Plugins that failed to load are listed with their error.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from core.capabilities import FEATURES
from core.step import Step

#: Features shown in the table's compact capability summary, with their labels.
SUMMARY = {"method.name": "method", "peft.type": "peft", "train.device": "device", "train.precision": "precision"}


def probe(name: str, cls: type[Step]) -> Step:
    """An instance of ``cls`` for a job that only names it (its config node's defaults)."""
    from omegaconf import OmegaConf

    defaults = {f.name: f.default for f in dataclasses.fields(cls.config_class)
                if f.default is not dataclasses.MISSING and not isinstance(f.default, (dict, list))}
    defaults.update(name=name, python=defaults.get("python") or None)
    return cls(OmegaConf.create({"backend": defaults}))


def describe(name: str, cls: type[Step], source: str = "") -> dict[str, Any]:
    """One backend as a JSON-able dict: identity, engine version, interpreter and capabilities."""
    from core.docgen import fmt

    row: dict[str, Any] = {"name": name, "source": source, "description": cls.description,
                           "engine": cls.engine_distribution or None, "version": None,
                           "install_hint": cls.install_hint or None, "python": sys.executable, "error": None}
    try:
        backend = probe(name, cls)
        row["python"] = backend.python()
        row["version"] = backend.engine_version()
    except Exception as exc:  # a backend's probe must not break the listing
        row["error"] = f"{type(exc).__name__}: {exc}"
    caps = cls.capabilities
    row["capabilities"] = {f: [v for v in FEATURES[f] if caps.can(f, v)] for f in FEATURES}
    row["requires"] = dict(caps.requires)
    row["summary"] = {label: [fmt(v) + (f"({caps.requires[f'{f}={fmt(v)}']})"
                                        if f"{f}={fmt(v)}" in caps.requires else "")
                              for v in row["capabilities"][f]] for f, label in SUMMARY.items()}
    return row


def listing(registry=None) -> dict[str, Any]:
    """Every registered backend (``describe``) and every plugin that failed to load."""
    if registry is None:
        from core import plugins

        registry = plugins.registry()
    steps = {group: [{"name": n, "source": registry.sources.get(f"{group}/{n}", ""), "description": c.description,
                      "needs": sorted(c.capabilities.needs)} for n, c in sorted(registry.group(group).items())]
             for group in ("export", "eval")}
    return {"backends": [describe(n, c, registry.sources.get(f"backend/{n}", ""))
                         for n, c in sorted(registry.backends.items())],
            "exporters": steps["export"], "evaluators": steps["eval"],
            "broken": [{"name": n, "error": e} for n, e in sorted(registry.broken.items())]}


def render(data: dict[str, Any], console=None) -> None:
    """Print ``listing()`` as rich tables."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    table = Table(title="anytune backends", title_justify="left", show_lines=True)
    table.add_column("backend", no_wrap=True)
    for col in ("from", "engine", "python", "supports"):
        table.add_column(col, overflow="fold")
    for row in data["backends"]:
        if row["version"] is not None:
            engine = escape(f"{row['engine'] or ''} {row['version']}".strip())
        else:
            engine = f"[red]not installed[/red]\n{escape(row['install_hint'] or '')}".rstrip()
        if row["error"]:
            engine += f"\n[red]{escape(row['error'])}[/red]"
        summary = "\n".join(f"[dim]{label}[/dim] {escape(' '.join(vals))}" for label, vals in row["summary"].items())
        table.add_row(f"[bold]{escape(row['name'])}[/bold]", escape(row["source"]), engine, escape(row["python"]),
                      summary)
    if data["backends"]:
        console.print(table)
        for row in data["backends"]:
            if row["description"]:
                console.print(f"  [bold]{escape(row['name'])}[/bold]: {escape(row['description'])}", highlight=False)
    else:
        console.print("No backends installed. Install one, e.g. pip install 'anytune[trl]'.")
    for group, title in (("exporters", "export"), ("evaluators", "eval")):
        for row in data.get(group, []):
            console.print(f"  [dim]{title}=[[/dim][bold]{escape(row['name'])}[/bold][dim]][/dim] "
                          f"{escape(row['description'])} [dim]({escape(row['source'])})[/dim]", highlight=False)
    for row in data["broken"]:
        console.print(f"[red]failed to load[/red] plugin [bold]{escape(row['name'])}[/bold]: "
                      f"{escape(row['error'])}", highlight=False)


def main(argv: list[str] | None = None, registry=None) -> int:
    """``python -m core.backends [--json | --matrix]``."""
    parser = argparse.ArgumentParser(prog="python -m core.backends", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true", help="print the listing as JSON")
    mode.add_argument("--matrix", action="store_true", help="print the markdown backend x feature matrix")
    args = parser.parse_args(argv)
    if registry is None:
        from core import plugins

        registry = plugins.registry()
    if args.matrix:
        from core.docgen import capability_matrix

        print(capability_matrix(registry), end="")
    elif args.json:
        print(json.dumps(listing(registry), indent=2, default=str))
    else:
        render(listing(registry))
    return 0


if __name__ == "__main__":
    sys.exit(main())
