"""Run exporters and evaluators on a finished run directory, without training again.

Usage::

    python -m core.after RUN_DIR export=[merged] eval=[heldout] [export.merged.dtype=bfloat16 ...]

``RUN_DIR`` holds a succeeded run (``python -m core`` left it). The steps run through
the same path as after training (``core.runner.run_after``): ``result.json`` gains
their steps and artefacts, ``eval.json`` their scores; ``metrics.jsonl`` and the
trained artefacts are left alone. Only ``export``/``eval`` overrides (and their
fields) are taken: the rest of the job is the run's own ``config.yaml``.

Exit status: 0 every requested step succeeded, 1 one failed (or was interrupted),
2 a usage or config error (nothing ran).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from core.errors import AnytuneError, ConfigError

USAGE = "usage: python -m core.after RUN_DIR export=[merged] eval=[heldout] [export.merged.dtype=bfloat16 ...]"
GROUPS = ("export", "eval")
"""The config groups this command takes overrides for."""


def parse(argv: list[str]) -> tuple[Path, list[str]]:
    """The run directory and the overrides; only ``export``/``eval`` (and their fields) and ``debug``.

    :raises ConfigError: no run directory, more than one, or an override of the trained job.
    """
    dirs = [a for a in argv if "=" not in a]
    overrides = [a for a in argv if "=" in a]
    if len(dirs) != 1:
        raise ConfigError(f"name one finished run directory\n{USAGE}")
    run_dir = Path(dirs[0])
    missing = [n for n in ("result.json", "config.yaml") if not (run_dir / n).is_file()]
    if missing:
        raise ConfigError(f"{run_dir} is not a run directory (it has no {' or '.join(missing)})\n{USAGE}")
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key.split(".")[0] not in GROUPS and key != "debug":
            raise ConfigError(f"'{key}' would change the trained job; python -m core.after takes only "
                              f"export=[...], eval=[...] and their fields (export.merged.dtype=...); "
                              f"train again with python -m core for the rest")
    if not any(o.split("=", 1)[0].lstrip("+~") in GROUPS for o in overrides):
        raise ConfigError(f"name the steps to run: export=[merged] and/or eval=[heldout]\n{USAGE}")
    return run_dir, overrides


def compose(backend: str, overrides: list[str]):
    """The ``export``/``eval`` nodes Hydra composes for ``overrides`` (with the run's backend, so composition
    needs no other backend installed)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("conf", version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"backend={backend}", *overrides])
    return OmegaConf.create({g: OmegaConf.to_container(cfg[g], resolve=True) for g in GROUPS})


def failed_steps(result: dict, after_cfg) -> list[dict]:
    """The requested steps that did not succeed, as ``result.json`` lists them."""
    kinds = {"export": "exporter", "eval": "evaluator"}
    wanted = {(kinds[g], n) for g in GROUPS for n in (after_cfg.get(g) or {})}
    steps = {(s["kind"], s["name"]): s for s in result.get("steps", [])}
    return [steps.get(k, {"kind": k[0], "name": k[1], "status": "missing"}) for k in sorted(wanted)
            if steps.get(k, {}).get("status") != "succeeded"]


def main(argv: list[str] | None = None) -> int:
    """Run the steps; print the summary; return the exit status (0, 1, 2)."""
    argv = sys.argv[1:] if argv is None else argv
    debug = os.environ.get("ANYTUNE_DEBUG") == "1" or "debug=true" in argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        from hydra.errors import HydraException
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        from core import config, plugins, progress, runner

        run_dir, overrides = parse(argv)
        overrides = [o for o in overrides if o.split("=", 1)[0] != "debug"]
        reg = plugins.registry()
        config.register()
        config.check_overrides(overrides, reg)
        backend = str(OmegaConf.select(OmegaConf.load(run_dir / "config.yaml"), "backend.name"))
        reg.backend(backend)  # not installed here: the helpful error, not Hydra's
        try:
            after_cfg = compose(backend, overrides)
        except (HydraException, OmegaConfBaseException) as exc:
            raise ConfigError(str(exc)) from exc
        with progress.Display(run_dir.name) as display:
            result = runner.run_after(run_dir, after_cfg, reg, display=display)
    except AnytuneError as exc:
        if debug:
            raise
        print(f"anytune: error: {exc}", file=sys.stderr)
        return 2
    progress.summary(result, run_dir, next_steps=False)
    failed = failed_steps(result, after_cfg)
    for step in failed:
        print(f"anytune: error: {step['kind']} '{step['name']}' {step['status']}"
              f"{': ' + step['error'] if step.get('error') else ''}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
