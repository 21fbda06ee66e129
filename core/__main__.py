"""``python -m core [overrides]``: thin glue between Hydra and ``core.runner.run``.

Exit codes: 0 every job succeeded (or was planned); 1 a step failed (an engine crash, a missing
engine); 2 the command line or the config is wrong (nothing was created); 3 the data has bad rows;
130 interrupted. A sweep exits 130 if a job was interrupted, else 1 if any job did not succeed.
Progress goes to stderr; the summary, the run directory and the next commands go to stdout
(``quiet=true``: only the run directory).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from core.errors import AnytuneError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DATA, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
"""Exit codes of ``python -m core`` (documented in docs/run-directory.md)."""
_codes: list[int] = []
"""Exit codes of the jobs this process ran (a launcher that runs jobs elsewhere leaves it short)."""
_sweep_dir: Path | None = None
"""A multirun's sweep directory, once known: its jobs' ``result.json`` give the sweep's exit code."""
HYDRA_INFO_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--shell-completion", "-sc",
                    "--resolve", "--package", "-p")
"""Hydra flags that print something and run no job: the pre-check leaves them to Hydra."""


def exit_code(result: dict) -> int:
    """The exit code one job's result stands for."""
    status = result.get("status")
    if status in ("succeeded", "planned"):
        return EXIT_OK
    if status == "interrupted":
        return EXIT_INTERRUPTED
    if result.get("error_type") == "DataError":
        return EXIT_DATA
    if result.get("error_type") in ("ConfigError", "UnsupportedFeature", "UnreadField"):
        return EXIT_USAGE
    return EXIT_FAILED


def objective(result: dict) -> float:
    """The value a tuning sweeper minimises: the job's held-out loss (``eval=[heldout]``'s, else the engine's
    own ``final.eval_loss``); NaN for a job that failed or measured none (the sweeper records a failed trial)."""
    heldout = ((result.get("eval") or {}).get("heldout") or {}).get("loss")
    value = heldout if heldout is not None else (result.get("final") or {}).get("eval_loss")
    return float(value) if result.get("status") == "succeeded" and value is not None else float("nan")


def _wants_metric(hc) -> bool:
    """The sweeper reads the job's return value as its objective (Optuna, Nevergrad, Ax ...): not Hydra's basic
    sweeper, which only launches."""
    target = str(hc.sweeper.get("_target_", ""))
    return bool(target) and not target.endswith("BasicSweeper")


def _task(cfg) -> dict | float:
    """One Hydra job: claim its run directory, run it, show it, never raise (a sweep goes on).

    Returns the job's result, or its :func:`objective` when the sweeper tunes against one."""
    from hydra.core.hydra_config import HydraConfig

    from core import progress, rundir, runner

    hc = HydraConfig.get()
    multirun = hc.mode.name == "MULTIRUN"
    label = f"{cfg.backend.name}:{cfg.method.name}" + (f" #{hc.job.num}" if multirun else "")
    from core import tasks

    task = tasks.current()  # one task per node of a scheduler job: task 0 runs the job, the others follow its plan
    try:
        if task is not None:
            tasks.check(cfg, task)
            tasks.rendezvous(task)
    except AnytuneError as exc:
        if task.rank == 0:
            progress.error(str(exc))
            _codes.append(EXIT_USAGE)
        return {"status": "failed", "error": str(exc)}
    if task is not None and task.rank > 0:
        return tasks.follow(cfg, Path(cfg.run_dir or hc.runtime.output_dir), task)
    try:
        run_dir = rundir.claim(Path(cfg.run_dir or hc.runtime.output_dir), given=bool(cfg.run_dir),
                               overwrite=bool(cfg.overwrite))
    except AnytuneError as exc:
        progress.error(str(exc))
        _codes.append(EXIT_USAGE)
        result = {"status": "failed", "error": str(exc)}
        return objective(result) if multirun and _wants_metric(hc) else result
    with progress.Display(label, enabled=not cfg.quiet) as display:
        result = runner.run(cfg, run_dir, display=display)
    progress.summary(result, run_dir, next_steps=not multirun, quiet=bool(cfg.quiet))
    _codes.append(exit_code(result))
    if multirun and _wants_metric(hc):
        value = objective(result)
        if value != value and result.get("status") == "succeeded":  # NaN: nothing held out was measured
            progress.error(f"{label}: no held-out loss for the sweeper to minimise; add eval=[heldout] "
                           "(or data.eval=FILE / data.eval_fraction=0.1)")
        return value
    return result


def sweep_codes(sweep_dir: Path) -> list[int]:
    """The exit code of every job of a sweep, read from its run directories (the jobs may have run in other
    processes or on other machines: joblib, submitit, Ray): a job directory without ``result.json`` failed."""
    from core import rundir, runproto

    codes = []
    for job in sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir() and rundir.holds_run(p)):
        result = job / runproto.RESULT
        codes.append(exit_code(runproto.read_json(str(result))) if result.exists() else EXIT_FAILED)
    return codes


def final_code(codes: list[int]) -> int:
    """A command's exit code from its jobs': one job's own, else 130 if one was interrupted, else 1 if any
    did not succeed."""
    if EXIT_INTERRUPTED in codes:
        return EXIT_INTERRUPTED
    if len(codes) > 1:
        return EXIT_FAILED if any(codes) else EXIT_OK
    return codes[0] if codes else EXIT_OK


def _precheck(argv: list[str], reg) -> None:
    """Compose and check a single job before Hydra creates anything, so a config error exits 2 and leaves
    no run directory. Sweeps are checked job by job (a refused job is recorded and the sweep goes on)."""
    from core import config, rundir, runner

    if any(a in ("-m", "--multirun") for a in argv) or any(a.split("=")[0] in HYDRA_INFO_FLAGS for a in argv):
        return
    cfg = config.compose([a for a in argv if not a.startswith("-")])
    runner.check(cfg, reg)
    if cfg.run_dir:
        rundir.check_free(Path(cfg.run_dir).expanduser(), overwrite=bool(cfg.overwrite))


def _resume(argv: list[str], reg) -> int:
    """``python -m core resume=DIR``: continue an interrupted run in place, without Hydra (its config.yaml is
    the job). Returns the exit code."""
    from core import progress, rundir, runner

    target = next(a.split("=", 1)[1] for a in argv if a.startswith("resume="))
    cfg = runner.resume_config(Path(target), [a for a in argv if not a.startswith("resume=")], reg)
    runner.check(cfg.copy(), reg)  # a config or capability error exits 2 before anything is touched
    run_dir = rundir.reclaim(Path(cfg.run_dir))
    label = f"{cfg.backend.name}:{cfg.method.name} (resumed)"
    with progress.Display(label, enabled=not cfg.quiet) as display:
        result = runner.run(cfg, run_dir, reg=reg, display=display)
    progress.summary(result, run_dir, quiet=bool(cfg.quiet))
    return exit_code(result)


def _claim_sweep_dir(argv: list[str]) -> list[str]:
    """A multirun's sweep directory, claimed exclusively like a run directory (two sweeps started in the same
    second get two directories): ``hydra.sweep.dir`` as the config names it, made unique, added to ``argv``."""
    from core import config, rundir

    global _sweep_dir
    if not any(a in ("-m", "--multirun") for a in argv) or any(a.split("=")[0] in HYDRA_INFO_FLAGS for a in argv):
        return argv
    given = next((a for a in argv if a.startswith("hydra.sweep.dir=")), None)
    if given:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        _sweep_dir = Path(str(OverridesParser.create().parse_override(given).value())).expanduser()
        return argv
    pattern = config.compose([], hydra=True).hydra.sweep.dir
    _sweep_dir = rundir.claim(Path(pattern))
    return [*argv, f"hydra.sweep.dir={config.quote(str(_sweep_dir))}"]


def main() -> None:
    """Load plugins, check the command line and the job, then hand over to Hydra."""
    argv = sys.argv[1:]
    debug = os.environ.get("ANYTUNE_DEBUG") == "1" or "debug=true" in argv
    try:
        from core import config, plugins

        reg = plugins.registry()
        config.register()
        if any(a.startswith("resume=") for a in argv):
            sys.exit(_resume(argv, reg))
        argv = config.open_mappings(argv)
        config.check_syntax(argv)
        config.check_overrides(argv, reg)
        _precheck(argv, reg)
        argv = _claim_sweep_dir(argv)
    except AnytuneError as exc:
        if debug:
            raise
        from core import progress

        progress.error(str(exc))
        sys.exit(EXIT_USAGE)
    import hydra

    run_dir = next((a.split("=", 1)[1] for a in argv if a.startswith("run_dir=")), None)
    if run_dir:  # Hydra's own output directory is the run directory: no stub left under ./runs
        argv.append(f"hydra.run.dir={config.quote(os.path.expanduser(run_dir))}")
    # Hydra's argparse takes overrides in one run: -m after an override ("offline=true -m a=1,2") would leave the
    # rest unrecognised, so the multirun switch goes first
    sys.argv[1:] = [a for a in argv if a in ("-m", "--multirun")] + [a for a in argv if a not in ("-m", "--multirun")]
    hydra.main(config_path="pkg://conf", config_name="config", version_base="1.3")(_task)()
    codes = list(_codes)
    if _sweep_dir is not None and _sweep_dir.is_dir():  # jobs run in other processes leave only their results
        on_disk = sweep_codes(_sweep_dir)
        if len(on_disk) > len(_codes):
            codes = [c for c in _codes if c == EXIT_USAGE] + on_disk
    sys.exit(final_code(codes))


if __name__ == "__main__":
    main()
