"""``python -m core.data show``: the label view and the data report.

::

    python -m core.data show RUN_DIR [-n 3] [--split eval]          # a prepared run directory
    python -m core.data show data.train=my.jsonl backend=torchtune   # any job: validated and prepared first

With overrides, the job is checked and its data prepared (``plan_only=true``) into a temporary run
directory (``--keep DIR`` keeps it there). Exit codes: 0, 2 for a config error, 3 for bad rows.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, print the data report and the label view; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m core.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("show", help="the first rows as the engine sees them, tokens that carry loss marked")
    p.add_argument("target", nargs="+", help="a run directory, or overrides as python -m core takes them")
    p.add_argument("-n", "--rows", type=int, default=3, help="rows to show (default 3)")
    p.add_argument("--split", choices=("train", "eval"), default="train")
    p.add_argument("--keep", metavar="DIR", help="with overrides: prepare into DIR instead of a temporary folder")
    args = parser.parse_args(argv)

    from core import progress
    from core.data import labels, report
    from core.errors import AnytuneError, DataError

    try:
        if len(args.target) == 1 and "=" not in args.target[0] and Path(args.target[0]).is_dir():
            return _show(Path(args.target[0]), args, labels, report)
        with tempfile.TemporaryDirectory(prefix="anytune-show-") as tmp:
            run_dir = Path(args.keep) if args.keep else Path(tmp) / "run"
            result = _prepare(args.target, run_dir)
            if result["status"] != "planned":
                progress.error(result.get("error") or result["status"])
                return 3 if result.get("error_type") == "DataError" else 2
            return _show(run_dir, args, labels, report)
    except DataError as exc:
        progress.error(str(exc))
        return 3
    except AnytuneError as exc:
        progress.error(str(exc))
        return 2


def _prepare(overrides: list[str], run_dir: Path) -> dict:
    """Validate the job and prepare its data and plan into ``run_dir`` (``plan_only``)."""
    from core import config, runner

    cfg = config.compose([*overrides, "plan_only=true"])
    return runner.run(cfg, run_dir)


def _show(run_dir: Path, args, labels, report) -> int:
    """Print the data report and the label view of a prepared run directory."""
    import json

    stats = json.loads((run_dir / "data" / "stats.json").read_text(encoding="utf-8"))
    print(report.text(stats))
    labels.show(labels.label_rows(run_dir, args.split, args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
