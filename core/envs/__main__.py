"""``python -m core.envs create|list|check|path|remove [backend]``: manage engine environments by hand.

The library is ``core.envs``; this command line alone looks backends up by name
(``core.plugins``, imported lazily), so ``core.envs`` itself imports no plugin machinery.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from core import envs
from core.errors import AnytuneError


def backend_class(name: str) -> Any:
    """The registered step class called ``name`` that has an environment: a backend, else an exporter or
    evaluator that declares one (``gguf``, ``lm_eval``).

    :raises AnytuneError: no installed backend has that name (nor such an exporter or evaluator).
    """
    from core import plugins

    reg = plugins.registry()
    if name not in reg.backends:
        for group in ("export", "eval"):
            cls = reg.group(group).get(name)
            if cls is not None and cls.environment:
                return cls
    return reg.backend(name)


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m core.envs``."""
    p = argparse.ArgumentParser(prog="python -m core.envs",
                                description="Engine environments: one venv per backend, from its pins. "
                                            "Jobs create a missing one on first use unless "
                                            f"{envs.CREATE_VARIABLE}=0.")
    sub = p.add_subparsers(dest="verb", required=True)
    c = sub.add_parser("create", help="create a backend's environment (no-op if it exists)")
    c.add_argument("backend")
    c.add_argument("--force", action="store_true", help="recreate it even if it exists")
    c.add_argument("--wheels", metavar="DIR", default=None,
                   help=f"install from the wheels in DIR alone, no package index (pip --no-index --find-links DIR); "
                        f"default: ${envs.WHEELS_VARIABLE}")
    c = sub.add_parser("check", help="check that a backend's environment has every pinned version")
    c.add_argument("backend")
    c = sub.add_parser("list", help="list environments (all, or one backend's)")
    c.add_argument("backend", nargs="?")
    c = sub.add_parser("remove", help="delete a backend's environments")
    c.add_argument("backend")
    c.add_argument("--stale", action="store_true", help="only those not matching the current pins")
    c = sub.add_parser("path", help="print the interpreter of a backend's environment")
    c.add_argument("backend")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m core.envs``; the exit status (0 done, 1 check/path found a problem, 2 error).

    :param argv: the arguments (None: ``sys.argv[1:]``).
    """
    from rich.console import Console
    from rich.table import Table

    args = parser().parse_args(argv)
    console = Console(stderr=True)
    out = Console()
    try:
        if args.verb == "list":
            rows = envs.list_envs(args.backend)
            if not rows:
                console.print(f"no environments under {envs.home()}")
                return 0
            table = Table("environment", "state", "size", "created", "installer", "pins", title=str(envs.home()))
            for r in rows:
                table.add_row(r["name"], r["state"], f"{r['size_mb']} MB", r.get("created", ""),
                              r.get("installer", ""), " ".join(r.get("requirements", [])))
            out.print(table)
            return 0
        env = envs.of(backend_class(args.backend))
        if args.verb == "create":
            envs.create(env, force=args.force, console=console, wheels=args.wheels)
            return 0
        if args.verb == "path":
            out.print(str(env.python), markup=False, highlight=False, soft_wrap=True)
            return 0 if env.exists() else 1
        if args.verb == "check":
            problems = envs.check(env)
            for problem in problems:
                console.print("✗", style="red", end=" ")
                console.print(problem, markup=False, highlight=False)
            if not problems:
                console.print(f"[green]✓[/] {env.backend}: {env.python} has every pinned version")
            return 1 if problems else 0
        if args.verb == "remove":
            if args.stale:
                gone = [Path(r["path"]) for r in envs.list_envs(env.backend) if Path(r["path"]) != env.path]
                envs.remove_paths(gone)
            else:
                gone = envs.remove(env.backend)
            for path in gone:
                console.print(f"removed {path}")
            if not gone:
                console.print(f"nothing to remove for {env.backend}")
            return 0
    except AnytuneError as exc:
        console.print("anytune: error:", style="bold red", end=" ")
        console.print(str(exc), markup=False, highlight=False)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
