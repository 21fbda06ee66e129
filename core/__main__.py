"""``python -m core [overrides]``: thin glue between Hydra and ``core.runner.run``."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from core.errors import AnytuneError

_failed = 0


def _task(cfg) -> dict:
    """One Hydra job: run it, show it, never raise (a sweep records failures and goes on)."""
    global _failed
    from hydra.core.hydra_config import HydraConfig

    from core import progress, runner

    hc = HydraConfig.get()
    run_dir = Path(cfg.run_dir or hc.runtime.output_dir)
    label = f"{cfg.backend.name}:{cfg.method.name}"
    if hc.mode.name == "MULTIRUN":
        label += f" #{hc.job.num}"
    with progress.Display(label) as display:
        result = runner.run(cfg, run_dir, display=display)
    progress.summary(result, run_dir, next_steps=hc.mode.name != "MULTIRUN")
    if result["status"] in ("failed", "interrupted"):
        _failed += 1
    return result


def main() -> None:
    """Load plugins, check the command line, then hand over to Hydra."""
    debug = os.environ.get("ANYTUNE_DEBUG") == "1" or "debug=true" in sys.argv
    try:
        from core import config, plugins

        reg = plugins.registry()
        config.register()
        sys.argv[1:] = config.open_mappings(sys.argv[1:])
        config.check_overrides(sys.argv[1:], reg)
    except AnytuneError as exc:
        if debug:
            raise
        print(f"anytune: error: {exc}", file=sys.stderr)
        sys.exit(2)
    import hydra

    hydra.main(config_path="pkg://conf", config_name="config", version_base="1.3")(_task)()
    sys.exit(1 if _failed else 0)


if __name__ == "__main__":
    main()
