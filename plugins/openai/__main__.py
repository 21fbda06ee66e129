"""Commands for a run's remote job: ``python -m plugins.openai attach|cancel|status RUN_DIR``.

- ``attach RUN_DIR``: re-attach to the job the run started (after Ctrl-C, or a lost connection) and finish the
  run directory as the run itself would have: metrics from the job's events, ``result.json`` by the core.
  The job is the run's ``config.yaml`` with ``backend.job_id`` set; nothing is uploaded or started again.
- ``cancel RUN_DIR``: cancel the run's job (it stops being billed); the state file records it.
- ``status RUN_DIR``: the job's status, fine-tuned model and trained tokens, as the service says now.

The API key comes from the environment variable the run's config names (``backend.key_env``).
Exit codes: those of ``python -m core`` (0 succeeded, 1 failed, 2 usage, 130 interrupted).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from core import runproto
from core.errors import AnytuneError, ConfigError


def state_of(run_dir: Path) -> tuple[dict, dict]:
    """(the run's config.yaml as a dict, its remote job's state file).

    :raises ConfigError: not a run directory of backend=openai, or no job was started in it.
    """
    from omegaconf import OmegaConf

    from plugins.openai.backend import JOB_STATE

    if not (run_dir / runproto.CONFIG).is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no {runproto.CONFIG})")
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / runproto.CONFIG))
    if (cfg.get("backend") or {}).get("name") != "openai":
        raise ConfigError(f"{run_dir} is a run of backend={(cfg.get('backend') or {}).get('name')}, not openai")
    path = run_dir / JOB_STATE
    state = runproto.read_json(str(path)) if path.is_file() else {}
    if not state.get("job_id"):
        raise ConfigError(f"{run_dir}: no fine-tuning job was created in this run ({JOB_STATE} names none); "
                          "start it again with python -m core")
    return cfg, state


def client_for(cfg: dict, state: dict):
    """The ``openai`` client for the run's service and key variable."""
    from openai import OpenAI

    b = cfg["backend"]
    key = os.environ.get(b.get("key_env") or "OPENAI_API_KEY")
    if not key:
        raise ConfigError(f"the API key variable {b.get('key_env')} is not set; export it")
    return OpenAI(api_key=key, base_url=state.get("base_url") or b["base_url"], max_retries=b.get("max_retries", 5))


def attach(run_dir: Path, quiet: bool = False) -> int:
    """Re-run the run's job in place with ``backend.job_id`` set: the worker follows the job to its end."""
    from omegaconf import OmegaConf, open_dict

    from core import plugins, progress, rundir, runner
    from core.__main__ import exit_code
    from core.schema import JobConfig

    cfg_dict, state = state_of(run_dir)
    reg = plugins.registry()
    backend = reg.backend("openai")
    cfg = OmegaConf.merge(OmegaConf.structured(JobConfig),
                          {"backend": OmegaConf.structured(backend.config_class)}, cfg_dict)
    with open_dict(cfg.backend):
        cfg.backend.pop("defaults", None)  # Hydra's defaults list of the option, not part of the job
    cfg.backend.job_id = state["job_id"]
    cfg.plan_only, cfg.quiet, cfg.run_dir, cfg.overwrite = False, quiet, str(run_dir), True
    runner.check(cfg.copy(), reg)
    run_dir = rundir.reclaim(run_dir)
    with progress.Display(f"openai:{cfg.method.name} (re-attached)", enabled=not quiet) as display:
        result = runner.run(cfg, run_dir, reg=reg, display=display)
    progress.summary(result, run_dir, quiet=quiet)
    return exit_code(result)


def cancel(run_dir: Path) -> int:
    """Cancel the run's job; record its status in the state file."""
    from plugins.openai.backend import JOB_STATE

    cfg, state = state_of(run_dir)
    job = client_for(cfg, state).fine_tuning.jobs.cancel(state["job_id"])
    state.update(status=job.status, detached=False)
    runproto.atomic_write_json(str(run_dir / JOB_STATE), state)
    print(f"fine-tuning job {job.id}: {job.status}")
    return 0


def status(run_dir: Path) -> int:
    """Print the job's status as the service says now."""
    cfg, state = state_of(run_dir)
    job = client_for(cfg, state).fine_tuning.jobs.retrieve(state["job_id"])
    print(f"fine-tuning job {job.id}: {job.status}"
          f"{'; model ' + job.fine_tuned_model if job.fine_tuned_model else ''}"
          f"{'; trained tokens ' + str(job.trained_tokens) if job.trained_tokens else ''}"
          f"{'; error ' + job.error.message if job.error else ''}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command; errors print one line and exit 2."""
    parser = argparse.ArgumentParser(prog="python -m plugins.openai", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("attach", "cancel", "status"))
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--quiet", action="store_true", help="attach: print only the run directory")
    args = parser.parse_args(argv)
    run_dir = args.run_dir.expanduser().resolve()
    try:
        if args.command == "attach":
            return attach(run_dir, args.quiet)
        return cancel(run_dir) if args.command == "cancel" else status(run_dir)
    except AnytuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the service refused (openai.APIStatusError ...): its own message
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
