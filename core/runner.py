"""The flow of one job, a straight pipeline: check → prepare data → plan → execute → finish.

``run(cfg, run_dir)`` is pure of Hydra: tests call it with a composed config. It
never raises for a user error or a step's failure: it returns the result (also
written to ``result.json``, by the core alone) so a sweep records the failure and
goes on. ``run_after(run_dir, steps)`` runs exporters and evaluators on a finished
run through the same path.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from core import checks, config, envs, runproto
from core.config import redacted
from core.errors import AnytuneError, ConfigError, EngineMissing
from core.plugins import Registry, notify, registry
from core.step import Context, DataInfo, Plan, Step, Trainer

#: Environment for every step's process: no telemetry ever; no hub when offline.
QUIET_ENV = {"HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "WANDB_DISABLED": "true",
             "WANDB_MODE": "disabled", "UNSLOTH_DISABLE_STATISTICS": "1", "TOKENIZERS_PARALLELISM": "false",
             "PYTHONUNBUFFERED": "1", "DISABLE_MLFLOW_INTEGRATION": "TRUE", "AXOLOTL_DO_NOT_TRACK": "1"}
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

Display = Callable[[str, "dict | None"], None]
"""``display(step_label, row)``: called with ``row=None`` when a step starts, then with each metrics row,
then with ``{"status": ...}`` when it ends."""


class StepFailed(AnytuneError):
    """A step's process exited with an error; the message holds its log's tail."""


@dataclass
class Job:
    """A checked job: the resolved config and its steps, in the order they run."""

    cfg: DictConfig
    trainer: Trainer
    after: list[Step]
    """Exporters, then evaluators."""
    kind: str
    """Canonical record kind of the data."""
    secrets: dict[str, str] = field(default_factory=dict)
    """Secret values moved out of the config: environment variable -> value, for the steps' processes only."""

    @property
    def steps(self) -> list[Step]:
        """``[trainer, *exporters, *evaluators]``."""
        return [self.trainer, *self.after]

    def needs(self, what: str) -> bool:
        """True if any step needs ``what`` from the core (tokenizer, template, weights, device)."""
        return any(what in s.capabilities.needs for s in self.steps)


@dataclass
class Planned:
    """One step's plan, written into its plan directory."""

    step: Step
    plan: Plan
    plan_dir: Path


@dataclass
class StepRun:
    """How one step's process ended."""

    step: Step
    status: str
    """succeeded, failed, interrupted or skipped."""
    exit_code: int | None = None
    seconds: float = 0.0
    outcome: dict[str, Any] = field(default_factory=dict)
    """What the step's outcome file held."""
    error: str | None = None
    first_row_s: float | None = None
    """Seconds from the step's start to its first metrics row (loading, data, first logged step)."""

    def record(self) -> dict[str, Any]:
        """The step as ``result.json`` lists it."""
        out = {"name": self.step.name, "kind": self.step.kind, "status": self.status, "exit_code": self.exit_code,
               "seconds": round(self.seconds, 3)}
        return {**out, "error": self.error} if self.error else out


# -- the pipeline -------------------------------------------------------------------------------------


def run(cfg: DictConfig, run_dir: Path, reg: Registry | None = None, display: Display | None = None) -> dict:
    """Run one job into ``run_dir`` and return its result (the content of ``result.json``).

    With ``cfg.resume`` (the config of an interrupted run, :func:`resume_config`) the job continues in
    ``run_dir`` from its last complete checkpoint: metrics after that step are dropped, logs are appended to.
    """
    reg = reg or registry()
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    resuming = bool(cfg.get("resume"))
    for stale in (runproto.RESULT, runproto.EVAL_FILE) + (() if resuming else (runproto.METRICS_FILE,)):
        (run_dir / stale).unlink(missing_ok=True)
    started = time.time()
    job, data, planned, runs, error, status, point = None, None, [], [], None, "failed", None
    try:
        try:
            job = check(cfg, reg)
        finally:
            if not resuming:  # a resumed run keeps the config.yaml it was started with
                save_config(job.cfg if job else cfg, run_dir)  # once, as resolved (or as given, if refused)
        if resuming:
            point = resume_point(job, run_dir, reg)
        if not cfg.plan_only:
            ensure_engines(job.steps)
        data = prepare(job, run_dir)
        planned = plan(job.steps, job.cfg, data, run_dir, job.trainer.artifacts(), resume=point and point[1])
        if cfg.plan_only:
            status = "planned"
        else:
            notify(reg, "on_run_start", run_dir=str(run_dir), config=redacted(job.cfg))
            runs = execute(planned, job.cfg, run_dir, reg, display, job.secrets)
            status, error = outcome_of(runs)
    except KeyboardInterrupt:
        status = "interrupted"
    except Exception as exc:
        error = exc
    if error is not None:
        notify(reg, "on_run_error", run_dir=str(run_dir), error=error)
    result = finish(run_dir, cfg, status, started, job=job, data=data, planned=planned, runs=runs, error=error,
                    resumed_from=point)
    if status != "planned":
        notify(reg, "on_run_end", run_dir=str(run_dir), result=result)
    return result


def check(cfg: DictConfig, reg: Registry) -> Job:
    """Resolve and check the job against the schema, the steps' capability tables and each other.

    Cheap: reads only the data's first row; imports no engine.
    """
    from core import data as datalib

    backend_cls = reg.backend(cfg.backend.name)
    checks.check_values(cfg)
    checks.expand_paths(cfg)
    checks.check_model_path(cfg)
    checks.check_applies(cfg)
    kind = datalib.detect_kind(cfg.data)
    datalib.check_method(kind, cfg.method.name, cfg.data.train)
    trainer = backend_cls(cfg)
    after = [reg.step(group, name)(cfg) for group in ("export", "eval") for name in (cfg.get(group) or {})]
    job = Job(cfg, trainer, after, kind)
    checks.check_reads(cfg, backend_cls, reg.backends)
    if job.needs("device"):
        checks.resolve_auto(cfg)
    # held-out data only a later step uses (an evaluator) asks nothing of the trainer's own evaluation
    heldout_after = any("heldout" in s.capabilities.needs for s in after)
    checks.check_capabilities(cfg, backend_cls, reg.backends, kind, skip=("data.eval",) if heldout_after else ())
    checks.check_heldout(job.steps, bool(cfg.data.eval) or cfg.data.eval_fraction > 0)
    for step in after:
        checks.check_capabilities(cfg, type(step), reg.group(step.group), kind, only_listed=True)
    checks.check_steps(trainer, after)
    if job.needs("weights") or job.needs("tokenizer"):
        checks.check_offline(cfg)
    for step in job.steps:
        checks.check_node(step)
        step.check()
    job.secrets = config.split_secrets(cfg)  # plans name them as ${oc.env:...}; only child processes hold them
    return job


def can_resume(backend_cls: type) -> bool:
    """A backend resumes if it reads ``train.save_steps``: it then writes resumable checkpoints and continues
    from one (``Context.resume``)."""
    return backend_cls.capabilities.reads_field("train.save_steps")


def resumable(backend_cls: type, run_dir: Path, reg: Registry) -> tuple[int, str]:
    """(step, checkpoint folder) of the newest complete checkpoint a run of ``backend_cls`` can resume from.

    :raises ConfigError: the backend cannot resume (naming those that can), or the run left no complete checkpoint.
    """
    if not can_resume(backend_cls):
        able = sorted(n for n, b in reg.backends.items() if can_resume(b))
        raise ConfigError(f"backend={backend_cls.name} cannot resume a run; backends that can: {', '.join(able)}")
    point = runproto.last_checkpoint(str(run_dir))
    if point is None:
        raise ConfigError(f"{run_dir} holds no complete checkpoint under {runproto.CHECKPOINTS}/ (the run stopped "
                          "before its first one: set train.save_steps to save them periodically); start it again")
    return point


def resume_point(job: Job, run_dir: Path, reg: Registry) -> tuple[int, str]:
    """:func:`resumable`, then drop the metrics rows logged after that checkpoint."""
    point = resumable(type(job.trainer), run_dir, reg)
    metrics = run_dir / runproto.METRICS_FILE
    if metrics.is_file():
        kept = [r for r in runproto.read_jsonl(str(metrics)) if r.get("step", 0) <= point[0]]
        runproto.atomic_write_text(str(metrics), "".join(json.dumps(r) + "\n" for r in kept))
    return point


def resume_config(run_dir: Path, overrides: list[str], reg: Registry | None = None) -> DictConfig:
    """The job of an interrupted or failed run directory, to continue in place (``python -m core resume=DIR``).

    :param overrides: ``key=value`` of the command line: only ``quiet``, ``debug`` and the secret values the
        saved config.yaml redacted (they are never saved) may be given.
    :raises ConfigError: not a run directory, a run that finished or was only planned, one in use, one without
        a checkpoint or of a backend that cannot resume, another override.
    """
    from core import rundir
    from core.schema import JobConfig

    reg = reg or registry()
    run_dir = Path(run_dir).expanduser().resolve()
    if not (run_dir / runproto.CONFIG).is_file():
        raise ConfigError(f"resume={run_dir}: not a run directory (no {runproto.CONFIG})")
    previous = runproto.read_json(str(run_dir / runproto.RESULT)) if (run_dir / runproto.RESULT).is_file() else {}
    if previous.get("status") in ("succeeded", "planned"):
        raise ConfigError(f"resume={run_dir}: the run {previous['status']}; only an interrupted or failed run "
                          "resumes (start a new run, e.g. with more train.max_steps)")
    rundir.check_idle(run_dir)
    saved = OmegaConf.load(run_dir / runproto.CONFIG)
    redacted_keys = set()

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, DictConfig):
                walk(v, f"{prefix}{k}.")
            elif v == "***":
                redacted_keys.add(f"{prefix}{k}")

    walk(saved, "")
    backend_cls = reg.backend(saved.backend.name)
    resumable(backend_cls, run_dir, reg)  # before anything is touched
    cfg = OmegaConf.merge(OmegaConf.structured(JobConfig), {"backend": OmegaConf.structured(
        backend_cls.config_class)}, saved)
    cfg.quiet = cfg.debug = False  # how the first run was shown is not part of the job
    for o in overrides:
        key, _, value = o.partition("=")
        if key in ("quiet", "debug"):
            OmegaConf.update(cfg, key, value.lower() == "true")
        elif key in redacted_keys:
            OmegaConf.update(cfg, key, value, force_add=True)
        else:
            raise ConfigError(f"resume={run_dir} continues the run as its config.yaml says; {key}= cannot be "
                              f"changed (start a new run for another job){'; secrets to give again: ' + ', '.join(sorted(redacted_keys)) if redacted_keys else ''}")
    missing = sorted(k for k in redacted_keys if OmegaConf.select(cfg, k) == "***")
    if missing:
        raise ConfigError(f"resume={run_dir}: secrets are never saved; give them again: "
                          + " ".join(f"{k}=..." for k in missing))
    cfg.resume, cfg.run_dir, cfg.plan_only = str(run_dir), str(run_dir), False
    return cfg


def ensure_engines(steps: list[Step]) -> None:
    """Every step's engine is installed, its managed environment created on first use (before any progress
    display starts), unless ``ANYTUNE_CREATE_ENVS=0``.

    :raises EngineMissing: with the command that installs or creates it.
    """
    for step in steps:
        if step.engine_version() is not None:
            continue
        if step.environment and envs.auto_create_enabled():
            envs.ensure(envs.of(step))
            if step.engine_version() is not None:
                continue
        if step.environment:
            raise EngineMissing(envs.missing_message(envs.of(step)))
        raise EngineMissing(f"{step.kind} '{step.name}' needs its engine ({step.engine_distribution}) in "
                            f"{step.python()}; install it with: {step.install_hint}")


def prepare(job: Job, run_dir: Path) -> DataInfo:
    """Write the normalised data once (from the data cache when identical data was prepared before);
    tokenizer and template work only where a step needs them."""
    from core import data as datalib

    cfg = job.cfg
    model_path = tokenizer_files(cfg.model.name_or_path, cfg.offline) if job.needs("tokenizer") else None
    stats = datalib.prepare(cfg.data, method=cfg.method.name, model_path=model_path,
                            out_dir=run_dir / runproto.DATA, max_length=cfg.train.max_length, seed=cfg.train.seed,
                            templated=job.needs("template"), kind=job.kind, cache=datalib.cache_dir())
    check_loss_tokens(cfg, stats)
    return DataInfo.load(run_dir)


def plan_dir_of(step: Step, run_dir: Path) -> Path:
    """``plan/`` for the trainer, ``plan/<group>-<name>/`` for exporters and evaluators."""
    base = run_dir / runproto.PLAN
    return base if step.kind == "trainer" else base / f"{step.group}-{step.name}"


def plan(steps: list[Step], cfg: DictConfig, data: DataInfo, run_dir: Path, artifacts: dict,
         resume: str | None = None) -> list[Planned]:
    """Each step writes its native files into its plan directory; the core adds ``command.json`` and ``run.sh``.

    :param artifacts: what the steps after the trainer get (what the trainer declares it leaves, or what a
        finished run's result lists).
    :param resume: the checkpoint folder the trainer continues from (a resumed run).
    """
    out = []
    for step in steps:
        plan_dir = plan_dir_of(step, run_dir)
        plan_dir.mkdir(parents=True, exist_ok=True)
        ctx = Context(job=cfg, run_dir=run_dir, plan_dir=plan_dir, data=data, config=step.config,
                      artifacts=artifacts, resume=resume if step.kind == "trainer" else None)
        p = step.plan(ctx)
        p.write(plan_dir, run_dir)
        out.append(Planned(step, p, plan_dir))
    return out


def execute(planned: list[Planned], cfg: DictConfig, run_dir: Path, reg: Registry,
            display: Display | None, secrets: dict[str, str] | None = None) -> list[StepRun]:
    """Run the planned steps in order; after a step that did not succeed the rest are skipped.

    :param secrets: environment variables only the steps' processes get (never written anywhere).
    """
    runs: list[StepRun] = []
    for p in planned:
        if runs and runs[-1].status != "succeeded":
            runs.append(StepRun(p.step, "skipped"))
            continue
        r = run_step(p, cfg, run_dir, reg, display, secrets or {})
        runs.append(r)
        if display:
            display(p.step.label, {"status": r.status})
        notify(reg, "on_step_end", run_dir=str(run_dir), step=p.step.name, kind=p.step.kind,
               outcome={**r.outcome, **r.record()})
    return runs


def outcome_of(runs: list[StepRun]) -> tuple[str, Exception | None]:
    """The job's status and error from its steps' runs."""
    for r in runs:
        if r.status == "interrupted":
            return "interrupted", None
        if r.status == "failed":
            return "failed", StepFailed(r.error or f"{r.step.label} failed")
    return "succeeded", None


def log_name(step: Step) -> str:
    """``train`` for the trainer, ``<group>-<name>`` for the others: the stem of its logs and outcome file."""
    return "train" if step.kind == "trainer" else f"{step.group}-{step.name}"


def run_step(p: Planned, cfg: DictConfig, run_dir: Path, reg: Registry, display: Display | None,
             secrets: dict[str, str] | None = None) -> StepRun:
    """Start one step's process, follow ``metrics.jsonl``, read its outcome; never leave it running."""
    logs = run_dir / runproto.LOGS
    logs.mkdir(exist_ok=True)
    stem = log_name(p.step)
    outcome_file = logs / f"{stem}.outcome.json"
    outcome_file.unlink(missing_ok=True)
    env = {**child_env(cfg, p.plan.env), **(secrets or {}), runproto.OUTCOME_ENV: str(outcome_file)}
    if display:
        display(p.step.label, None)
    started = time.time()
    interrupted = False
    mode = "a" if cfg.get("resume") else "w"  # a resumed run's logs go on after the interrupted one's
    with open(logs / f"{stem}.stdout.log", mode) as out, open(logs / f"{stem}.stderr.log", mode) as err:
        try:
            proc = subprocess.Popen(p.plan.command, cwd=run_dir, stdout=out, stderr=err, env=env)
        except OSError as exc:
            raise EngineMissing(f"cannot start {p.plan.command[0]} for {p.step.label}: {exc}") from exc
        tail = MetricsTail(run_dir / runproto.METRICS_FILE, skip_existing=bool(cfg.get("resume"))) \
            if p.step.kind == "trainer" else None
        first_row: list[float] = []
        diverged: list[str] = []
        precision = OmegaConf.select(cfg, "train.precision")

        def dispatch() -> None:
            for row in tail.read() if tail else ():
                if not first_row:
                    first_row.append(round(time.time() - started, 3))
                notify(reg, "on_metrics", run_dir=str(run_dir), metrics=row)
                if display:
                    display(p.step.label, row)
                why = None if diverged else divergence(row, precision)
                if why:  # the weights are NaN from here on: stop now, saving nothing
                    diverged.append(why)
                    stop(proc, save=False)

        try:
            while proc.poll() is None:
                dispatch()
                time.sleep(0.2)
        except KeyboardInterrupt:
            interrupted = True
            stop(proc)
        finally:
            if proc.poll() is None:  # anything raised here: the engine must not outlive the core
                stop(proc)
        dispatch()
    redact_logs(logs, secrets or {})
    outcome = runproto.read_json(str(outcome_file)) if outcome_file.is_file() else {}
    code = proc.returncode
    if diverged:
        status = "failed"
    elif interrupted or code in (runproto.INTERRUPTED, -signal.SIGINT):
        status = "interrupted"
    else:
        status = "succeeded" if code == 0 else "failed"
    error = None
    if diverged:
        error = (f"{p.step.label}: training diverged ({diverged[0]}, metrics.jsonl) and was stopped; the weights "
                 f"are not numbers from that step on. Lower train.learning_rate, or check the data and the "
                 f"precision (train.precision={precision})")
    elif status == "failed":
        error = (f"{p.step.label} exited with code {code}"
                 f"{': ' + outcome['error'] if outcome.get('error') else ''}\n"
                 f"--- last lines of {logs / (stem + '.stderr.log')} ---\n"
                 f"{log_tail(logs / (stem + '.stderr.log'))}")
    return StepRun(p.step, status, code, time.time() - started, outcome, error,
                   first_row[0] if first_row else None)


# -- the result ---------------------------------------------------------------------------------------


def artifacts_of(outcome: dict) -> dict[str, dict]:
    """An outcome's artefacts, each as ``{"path": ...}`` or ``{"id": ..., "provider": ...}``."""
    return {k: (runproto.local_artifact(v) if isinstance(v, str) else v)
            for k, v in (outcome.get("artifacts") or {}).items()}


def final_of(outcome: dict, metrics: Path) -> dict[str, Any]:
    """``final`` in the one schema of ``runproto.FINAL``: counts and first/last loss from ``metrics.jsonl``
    (the same for every engine), the engine's own mean training loss and final eval loss."""
    rows = runproto.read_jsonl(str(metrics)) if metrics.is_file() else []
    losses = [r["loss"] for r in rows if "loss" in r]
    own = outcome.get("final") or {}
    final = {"steps": max((r["step"] for r in rows if "step" in r), default=own.get("steps")),
             "tokens": next((r["tokens"] for r in reversed(rows) if "tokens" in r), None),
             "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
             "train_loss": own.get("train_loss"), "eval_loss": own.get("eval_loss")}
    return {k: v for k, v in final.items() if v is not None}


TRAINER_FIELDS = ("trainable_parameters", "versions", "hardware", "peak_memory_mb", "train_seconds",
                  "worker_seconds")
"""Outcome fields of the trainer that ``result.json`` carries at its top level."""


def finish(run_dir: Path, cfg: DictConfig, status: str, started: float, *, job: Job | None, data: DataInfo | None,
           planned: list[Planned], runs: list[StepRun], error: BaseException | None,
           previous: dict | None = None, resumed_from: tuple[int, str] | None = None) -> dict:
    """Build ``result.json`` (and ``eval.json``) from what each stage returned; write them atomically.

    :param previous: an earlier result of the same run directory that this one extends (``run_after``).
    :param resumed_from: (step, checkpoint) a resumed run continued from.
    """
    result: dict[str, Any] = dict(previous or {})
    result.update(status=status, backend=OmegaConf.select(cfg, "backend.name") or "?", run_dir=str(run_dir))
    if job is not None and not previous:
        result["engine_version"] = job.trainer.engine_version() or None
    if data is not None and not previous:
        result["data"] = dict(data.stats)
    if status == "planned" and job is not None and data is not None:  # plan_only: what the job will take
        from core import estimate

        result["estimate"] = estimate.safe(job.cfg, job.trainer, dict(data.stats),
                                           next((p.plan_dir for p in planned if p.step.kind == "trainer"), None))
    for p in planned:
        if p.step.kind == "trainer":
            result["plan"] = {"command": p.plan.command, "files": p.plan.files}
    steps = {(s["kind"], s["name"]): s for s in result.get("steps", [])}
    scores = runproto.read_json(str(run_dir / runproto.EVAL_FILE)) if previous and (
        run_dir / runproto.EVAL_FILE).is_file() else {}
    for r in runs:
        steps[(r.step.kind, r.step.name)] = r.record()
        if r.step.kind == "trainer":
            result["exit_code"] = r.exit_code
            result.update({k: r.outcome[k] for k in TRAINER_FIELDS if k in r.outcome})
            if r.first_row_s is not None:
                result["time_to_first_step_s"] = r.first_row_s
            result["loss_normalisation"] = r.step.loss_normalisation
            result["final"] = final_of(r.outcome, run_dir / runproto.METRICS_FILE)
            result["artifacts"] = artifacts_of(r.outcome)
        elif r.status == "succeeded":
            result.setdefault("artifacts", {}).update(artifacts_of(r.outcome))
            if r.step.kind == "evaluator":
                scores[r.step.name] = r.outcome.get("scores", {})
    if steps:
        result["steps"] = list(steps.values())
    point = runproto.last_checkpoint(str(run_dir)) if status in ("interrupted", "failed") else None
    if point:  # what `python -m core resume=RUN_DIR` would continue from
        result["checkpoint"] = {"step": point[0], "path": point[1]}
    if resumed_from:
        result["resumed_from"] = {"step": resumed_from[0], "checkpoint": resumed_from[1]}
    if scores:
        runproto.atomic_write_json(str(run_dir / runproto.EVAL_FILE), scores)
        result["eval"] = scores
    for stale in ("error", "error_type", "traceback"):  # a previous result's failure (run_after) is not this one's
        result.pop(stale, None)
    if error is not None:
        result["error"], result["error_type"] = str(error), type(error).__name__
        if not isinstance(error, AnytuneError) or cfg.get("debug"):
            result["traceback"] = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    wall = round(time.time() - started, 3)
    result["wall_seconds"] = round(result.get("wall_seconds", 0) + wall, 3) if previous else wall
    runproto.atomic_write_json(str(run_dir / runproto.RESULT), result)
    return result


# -- steps on a finished run --------------------------------------------------------------------------


def run_after(run_dir: Path, after_cfg: DictConfig, reg: Registry | None = None,
              display: Display | None = None) -> dict:
    """Run exporters and evaluators on a finished run directory, without training again.

    :param after_cfg: a config whose ``export`` and ``eval`` nodes name the steps (composed by ``core.after``).
    :returns: the run's updated result (``result.json`` gains the steps, artefacts and scores; the run's
        status stays succeeded, each step's own status is in ``steps``).
    :raises ConfigError: the run did not succeed, or a step cannot run on it (before anything runs).
    """
    reg = reg or registry()
    run_dir = Path(run_dir).resolve()
    started = time.time()
    previous = runproto.read_json(str(run_dir / runproto.RESULT))
    if previous.get("status") != "succeeded":
        raise ConfigError(f"{run_dir} holds a run whose status is {previous.get('status')}; exporters and "
                          "evaluators need a finished, succeeded run")
    cfg = OmegaConf.load(run_dir / runproto.CONFIG)
    cfg.export, cfg.eval = after_cfg.get("export") or {}, after_cfg.get("eval") or {}
    trainer = reg.backend(cfg.backend.name)(cfg)
    after = [reg.step(g, n)(cfg) for g in ("export", "eval") for n in (cfg.get(g) or {})]
    if not after:
        raise ConfigError("name the steps to run: export=[merged] and/or eval=[heldout]")
    data = DataInfo.load(run_dir)
    for step in after:
        checks.check_capabilities(cfg, type(step), reg.group(step.group), data.kind, only_listed=True)
    checks.check_steps(trainer, after)
    checks.check_heldout(after, data.eval is not None)
    for step in after:
        checks.check_node(step)
        step.check()
    ensure_engines(after)
    planned = plan(after, cfg, data, run_dir, artifacts_of(previous))
    runs = execute(planned, cfg, run_dir, reg, display)
    _, error = outcome_of(runs)
    return finish(run_dir, cfg, "succeeded", started, job=None, data=None, planned=[], runs=runs, error=error,
                  previous=previous)


# -- helpers --------------------------------------------------------------------------------------------


def save_config(cfg: DictConfig, run_dir: Path) -> None:
    """Write the resolved, redacted config as ``config.yaml``."""
    runproto.atomic_write_text(str(run_dir / runproto.CONFIG), OmegaConf.to_yaml(OmegaConf.create(redacted(cfg))))


def check_loss_tokens(cfg: DictConfig, stats: dict) -> None:
    """Refuse rows whose prompt alone fills train.max_length: truncated, they carry no loss at all
    (TRL 1.16's ORPO then logs loss 0 for every step instead of failing)."""
    fills = (stats.get("prompt_fills_max_length") or {}).get("train")
    if not fills or (cfg.method.name == "sft" and not cfg.method.completion_only_loss):
        return
    longest = ((stats.get("tokens") or {}).get("train") or {}).get("max")
    raise ConfigError(f"{fills} training row(s) have a prompt that fills train.max_length={cfg.train.max_length} "
                      f"by itself, so after truncation they carry no loss; raise train.max_length (the longest "
                      f"row has {longest} tokens) or drop those rows (data/stats.json: prompt_fills_max_length)")


TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "config.json"]


def tokenizer_files(name: str, offline: bool) -> str | None:
    """Local directory with the model's tokenizer files (for the template of record and token counts).

    A hub id is resolved through huggingface_hub when it is installed: from its cache,
    or downloading only these small files unless offline. None when they cannot be had.
    """
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        return snapshot_download(repo_id=name, allow_patterns=TOKENIZER_FILES, local_files_only=offline)
    except Exception:
        return None


def child_env(cfg: DictConfig, plan_env: dict[str, str]) -> dict[str, str]:
    """A step's environment: ours, the plan's, no telemetry, no hub when offline."""
    env = {**os.environ, **QUIET_ENV, **plan_env}
    if cfg.get("offline"):
        env.update(OFFLINE_ENV)
    return env


def divergence(row: dict[str, Any], precision: str | None) -> str | None:
    """Why a training row of ``metrics.jsonl`` shows a diverged run: a loss, or a gradient norm, that is not a
    finite number (under fp16 only the loss: its loss scaler skips steps whose gradients overflow, by design).
    None when it shows none. transformers logs a NaN step's loss as the mean of the earlier ones
    (``logging_nan_inf_filter``), so the gradient norm is often the first to tell."""
    for key in ("loss",) if precision == "fp16" else ("loss", "grad_norm"):
        value = row.get(key)
        if isinstance(value, (int, float)) and not math.isfinite(value):
            return f"{key} is {value} at step {row.get('step')}"
    return None


def stop(proc: subprocess.Popen, grace: float = 60.0, save: bool = True) -> None:
    """Interrupt the step's process (it finishes its step, saves a checkpoint and records ``interrupted``),
    then terminate, then kill. ``save=False`` (a diverged run: nothing worth a checkpoint) starts at terminate."""
    interrupt = ((signal.SIGINT, grace),) if save else ()
    for sig, wait in (*interrupt, (signal.SIGTERM, 5.0)):
        if proc.poll() is not None:
            return
        try:
            proc.send_signal(sig)
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:
            continue
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def redact_logs(logs: Path, secrets: dict[str, str]) -> None:
    """Replace every secret value in the step's logs (``logs/`` and every rank's under it) with ``***``: an
    engine may print what it resolved from its environment (torchtune's recipe prints its whole config)."""
    values = sorted({v for v in secrets.values() if v}, key=len, reverse=True)
    if not values:
        return
    for path in logs.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        clean = data
        for value in values:
            clean = clean.replace(value.encode(), b"***")
        if clean != data:
            runproto.atomic_write_text(str(path), clean.decode("utf-8", errors="replace"))


def log_tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class MetricsTail:
    """Reads rows appended to metrics.jsonl since the last call (complete lines only)."""

    def __init__(self, path: Path, skip_existing: bool = False):
        """:param skip_existing: start after the rows already there (a resumed run's earlier rows)."""
        self.path, self.buf = path, ""
        self.pos = path.stat().st_size if skip_existing and path.exists() else 0

    def read(self) -> list[dict]:
        """New complete rows; a malformed line is reported and skipped."""
        import json

        if not self.path.exists():
            return []
        with open(self.path) as f:
            f.seek(self.pos)
            chunk = f.read()
            self.pos = f.tell()
        self.buf += chunk
        *lines, self.buf = self.buf.split("\n")
        rows = []
        for line in lines:
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    print(f"anytune: skipped a malformed metrics line: {line[:80]}", file=sys.stderr)
        return rows
