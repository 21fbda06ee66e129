"""The flow of one job: validate, prepare data, plan, run the engine in a child process, finish.

``run(cfg, run_dir)`` is pure of Hydra: tests call it with a composed config.
It never raises for a user error or an engine failure: it returns the result
(also written to ``result.json``) so a sweep records the failure and goes on.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from core import data as datalib
from core import envs
from core import workerlib
from core.config import check_values, redacted
from core.errors import AnytuneError, ConfigError, EngineMissing
from core.plugins import Registry, registry
from core.validate import validate

#: Environment for every engine process: no telemetry ever; no hub when offline.
QUIET_ENV = {"HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "WANDB_DISABLED": "true",
             "WANDB_MODE": "disabled", "UNSLOTH_DISABLE_STATISTICS": "1", "TOKENIZERS_PARALLELISM": "false",
             "PYTHONUNBUFFERED": "1", "DISABLE_MLFLOW_INTEGRATION": "TRUE"}
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


class EngineFailed(AnytuneError):
    """The engine's process exited with an error; the message holds its log's tail."""


def run(cfg: DictConfig, run_dir: Path, reg: Registry | None = None,
        progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Run one job into ``run_dir`` and return its result (the content of ``result.json``)."""
    reg = reg or registry()
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("result.json", "metrics.jsonl"):
        (run_dir / stale).unlink(missing_ok=True)
    started = time.time()
    name = OmegaConf.select(cfg, "backend.name") or "?"
    result: dict[str, Any] = {"status": "failed", "backend": name, "run_dir": str(run_dir)}
    try:
        backend = prepare(cfg, run_dir, reg, result)
        plan = backend.plan(run_dir)
        plan.write(run_dir / "plan")
        result["plan"] = {"command": plan.command, "files": plan.files}
        if cfg.plan_only:
            result["status"] = "planned"
        else:
            reg.pm.hook.on_run_start(run_dir=str(run_dir), config=redacted(cfg))
            execute(plan, cfg, run_dir, reg, result, progress)
    except KeyboardInterrupt:
        result["status"] = "interrupted"
    except Exception as exc:
        result["status"] = "failed"
        result["error"] = str(exc)
        result["error_type"] = type(exc).__name__
        if not isinstance(exc, AnytuneError) or cfg.get("debug"):
            import traceback

            result["traceback"] = traceback.format_exc()
        reg.pm.hook.on_run_error(run_dir=str(run_dir), error=exc)
    result["wall_seconds"] = round(time.time() - started, 3)
    workerlib.atomic_write_json(str(run_dir / "result.json"), result)
    if result["status"] != "planned":
        reg.pm.hook.on_run_end(run_dir=str(run_dir), result=result)
    return result


def prepare(cfg: DictConfig, run_dir: Path, reg: Registry, result: dict):
    """Validate, save the redacted config and write the normalised data; return the backend."""
    backend_cls = reg.backend(cfg.backend.name)
    save_config(cfg, run_dir)  # first as given, so a refused job still records what it was
    check_values(cfg)
    kind = datalib.detect_kind(cfg.data)
    datalib.check_method(kind, cfg.method.name, cfg.data.train)
    validate(cfg, backend_cls, reg.backends, kind)
    backend = backend_cls(cfg)
    backend.check()
    version = backend.engine_version()
    result["engine_version"] = version
    if version is None and not cfg.plan_only:
        if backend.environment:
            raise EngineMissing(envs.missing_message(envs.of(backend)))
        raise EngineMissing(f"backend '{backend.name}' needs its engine ({backend.engine_distribution}) "
                            f"in {backend.python()}; install it with: {backend.install_hint}")
    save_config(cfg, run_dir)  # again, with auto settings resolved
    result["data"] = datalib.prepare(cfg.data, method=cfg.method.name,
                                     model_path=tokenizer_files(cfg.model.name_or_path, cfg.offline),
                                     out_dir=run_dir / "data", max_length=cfg.train.max_length,
                                     seed=cfg.train.seed)
    check_loss_tokens(cfg, result["data"])
    return backend


def save_config(cfg: DictConfig, run_dir: Path) -> None:
    """Write the resolved, redacted config as ``config.yaml``."""
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(redacted(cfg))))


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
    """The engine's environment: ours, the plan's, no telemetry, no hub when offline."""
    env = {**os.environ, **QUIET_ENV, **plan_env}
    if cfg.offline:
        env.update(OFFLINE_ENV)
    return env


def execute(plan, cfg: DictConfig, run_dir: Path, reg: Registry, result: dict,
            progress: Callable[[dict], None] | None) -> None:
    """Start the engine process, follow metrics.jsonl, merge the worker's result.json."""
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    with open(logs / "stdout.log", "w") as out, open(logs / "stderr.log", "w") as err:
        try:
            proc = subprocess.Popen(plan.command, cwd=run_dir, stdout=out, stderr=err,
                                    env=child_env(cfg, plan.env))
        except OSError as exc:
            raise EngineMissing(f"cannot start {plan.command[0]}: {exc}") from exc
        tail = MetricsTail(metrics_path)

        def dispatch() -> None:
            for row in tail.read():
                reg.pm.hook.on_metrics(run_dir=str(run_dir), metrics=row)
                if progress:
                    progress(row)

        try:
            while proc.poll() is None:
                dispatch()
                time.sleep(0.2)
        except KeyboardInterrupt:
            stop(proc)
            result["status"] = "interrupted"
        dispatch()
    worker = run_dir / "result.json"
    written = workerlib.read_json(str(worker)) if worker.exists() else {}
    status = written.pop("status", None)
    result.update(written)
    result["exit_code"] = proc.returncode
    if result["status"] == "interrupted" or status == "interrupted":
        result["status"] = "interrupted"
    elif proc.returncode == 0 and status == "succeeded":
        result["status"] = "succeeded"
    else:
        result["status"] = "failed"
        raise EngineFailed(f"{result['backend']} engine exited with code {proc.returncode}"
                           f"{': ' + result['error'] if result.get('error') else ''}\n"
                           f"--- last lines of {logs / 'stderr.log'} ---\n{log_tail(logs / 'stderr.log')}")


def stop(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """Interrupt the engine (it records ``interrupted``), then terminate, then kill."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0)):
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


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class MetricsTail:
    """Reads rows appended to metrics.jsonl since the last call (complete lines only)."""

    def __init__(self, path: Path):
        self.path, self.pos, self.buf = path, 0, ""

    def read(self) -> list[dict]:
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
