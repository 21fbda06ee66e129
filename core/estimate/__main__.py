"""``python -m core.estimate [--json] [overrides]``: the job composed as ``python -m core`` composes it, prepared
and planned in a scratch directory, and its estimate printed (``core.estimate``)."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from core import estimate


def main(argv: list[str] | None = None) -> int:
    """Compose the job from overrides (as ``python -m core``), prepare and plan it in a scratch directory, print
    the estimate. Exit 2 for a config error."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(estimate.__doc__.split("\n\n")[0] + "\n\nusage: python -m core.estimate [--json] [key=value ...]")
        return 0
    as_json = "--json" in argv
    argv = [a for a in argv if a != "--json"]
    from rich.console import Console

    from core import config, plugins, progress, runner
    from core.errors import AnytuneError

    try:
        reg = plugins.registry()
        config.register()
        argv = config.open_mappings(argv)
        config.check_syntax(argv)
        config.check_overrides(argv, reg)
        cfg = config.compose(argv)
    except AnytuneError as exc:
        progress.error(str(exc))
        return 2
    cfg.plan_only, cfg.run_dir = True, None
    with tempfile.TemporaryDirectory(prefix="anytune-estimate-") as scratch:
        result = runner.run(cfg, Path(scratch), reg=reg)
    if result["status"] != "planned":
        progress.error(result.get("error", "the job could not be planned"))
        return 2 if result.get("error_type") in ("ConfigError", "UnsupportedFeature", "UnreadField") else 1
    if as_json:
        print(json.dumps(result["estimate"], indent=2))
    else:
        Console().print(estimate.table(result["estimate"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
