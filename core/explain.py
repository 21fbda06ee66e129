"""``python -m core.explain RUN_DIR``: a run directory in plain words.

What ran (engine, versions, hardware, the resolved job), what the engine was told (the plan's command and
files), how it ended and why (for a failure: the error, the log lines that matter, out-of-memory recognised
with what to change), the metrics summary, and the commands that fit what happened next.
Everything is read from the run directory alone.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

from core import runproto

JOB_FIELDS = ("model.name_or_path", "data.train", "data.eval", "method.name", "peft.type", "peft.r",
              "train.max_steps", "train.epochs", "train.batch_size", "train.grad_accum", "train.learning_rate",
              "train.max_length", "train.precision", "train.device", "train.seed", "method.packing")
"""The job's fields shown (config.yaml holds them all)."""

OOM = re.compile(r"out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|std::bad_alloc|Cannot allocate memory",
                 re.IGNORECASE)
"""Log lines of a process that ran out of memory."""
OOM_ADVICE = ("the engine ran out of memory; in order of cost to the result: train.gradient_checkpointing=true, "
              "a smaller train.batch_size with a larger train.grad_accum (the same effective batch), a shorter "
              "train.max_length, peft=qlora (4-bit base, CUDA), or a machine with more memory")
KILLED_CODES = (-9, 137)
"""Exit codes of a process the kernel killed (SIGKILL: the out-of-memory killer, most often)."""
MARKERS = re.compile(r"Error|Exception|Traceback|error:|FAILED|Killed", re.IGNORECASE)


def important_lines(log: Path, limit: int = 12) -> list[str]:
    """The lines of a log that say why it failed: the last traceback (its head and its last lines), else the
    last lines that name an error."""
    if not log.is_file():
        return []
    lines = log.read_text(errors="replace").splitlines()
    start = max((i for i, line in enumerate(lines) if line.startswith("Traceback")), default=None)
    if start is not None:
        block = lines[start:]
        return block[:2] + (["  ..."] if len(block) > limit else []) + block[-(limit - 2):] if len(block) > limit \
            else block
    return [line for line in lines if MARKERS.search(line)][-limit:]


def explain(run_dir: Path) -> list[tuple[str, list[str]]]:
    """(section title, lines) for a run directory."""
    from omegaconf import OmegaConf

    from core.progress import next_commands

    run_dir = Path(run_dir).resolve()
    if not (run_dir / runproto.CONFIG).is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {runproto.CONFIG})")
    cfg = OmegaConf.load(run_dir / runproto.CONFIG)
    get = OmegaConf.select
    result = runproto.read_json(str(run_dir / runproto.RESULT)) if (run_dir / runproto.RESULT).is_file() else {}
    status = result.get("status", "unknown (no result.json: still running, or the process was killed)")
    sections: list[tuple[str, list[str]]] = []

    ran = [f"backend {result.get('backend') or get(cfg, 'backend.name')}"
           f" (engine {result.get('engine_version') or '?'}); status {status}"]
    if result.get("versions"):
        ran.append("versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v))
    hw = result.get("hardware") or {}
    if hw:
        ran.append("hardware: " + ", ".join(f"{k} {v}" for k, v in hw.items() if v not in (None, "", [])))
    ran += [f"{k} = {get(cfg, k)}" for k in JOB_FIELDS if get(cfg, k) not in (None, "", [])]
    sections.append(("What ran", ran))

    plan = result.get("plan") or {}
    told = []
    if plan.get("command"):
        told.append("command: " + " ".join(map(str, plan["command"])))
    told += [f"file: {f}" for f in plan.get("files") or []]
    if not told and (run_dir / runproto.PLAN).is_dir():
        told += [f"file: {p.relative_to(run_dir)}" for p in sorted((run_dir / runproto.PLAN).glob("*")) if p.is_file()]
    sections.append(("What the engine was told", told or ["no plan was written (the job was refused first)"]))

    ended = [f"status {status}" + (f", exit code {result['exit_code']}" if result.get("exit_code") is not None else "")]
    if result.get("error"):
        ended.append("error: " + result["error"].splitlines()[0])
    failed = next((s for s in result.get("steps") or [] if s["status"] in ("failed", "interrupted")), None)
    stem = "train" if not failed or failed["kind"] == "trainer" else \
        f"{'export' if failed['kind'] == 'exporter' else 'eval'}-{failed['name']}"
    log = run_dir / runproto.LOGS / f"{stem}.stderr.log"
    if status == "failed":
        lines = important_lines(log)
        if lines:
            ended.append(f"from {log}:")
            ended += ["  " + line for line in lines]
        text = log.read_text(errors="replace") if log.is_file() else ""
        if OOM.search(text) or OOM.search(result.get("error") or "") or result.get("exit_code") in KILLED_CODES:
            ended.append(OOM_ADVICE)
    if status == "interrupted" and result.get("checkpoint"):
        ended.append(f"stopped after step {result['checkpoint']['step']}; checkpoint {result['checkpoint']['path']}")
    if result.get("resumed_from"):
        ended.append(f"resumed from step {result['resumed_from']['step']}")
    sections.append(("How it ended", ended))

    metrics = run_dir / runproto.METRICS_FILE
    rows = runproto.read_jsonl(str(metrics)) if metrics.is_file() else []
    losses = [r["loss"] for r in rows if "loss" in r]
    summary = []
    if losses:
        steps = max(r.get("step", 0) for r in rows)
        summary.append(f"{steps} steps logged; loss {losses[0]:.4g} -> {losses[-1]:.4g} (lowest {min(losses):.4g})")
        speeds = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s")]
        if speeds:
            summary.append(f"tokens/s median {statistics.median(speeds):,.0f}")
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    if evals:
        summary.append(f"eval loss {evals[0]:.4g} -> {evals[-1]:.4g}")
    if result.get("peak_memory_mb"):
        summary.append(f"peak memory {result['peak_memory_mb']:,.0f} MiB")
    for name, scores in (result.get("eval") or {}).items():
        summary.append(f"{name}: " + ", ".join(
            f"{k} {v['value']:.4g}" if isinstance(v, dict) and isinstance(v.get("value"), (int, float)) else f"{k} {v}"
            for k, v in (scores or {}).items()))
    sections.append(("Metrics", summary or ["no metrics were logged"]))
    sections.append(("Next", [f"{cmd}    # {what}" for cmd, what in next_commands(result, run_dir)] if result else
                     [f"python -m core.explain {run_dir}    # again once the run has ended"]))
    return sections


def main(argv: list[str] | None = None) -> int:
    """``python -m core.explain RUN_DIR``."""
    parser = argparse.ArgumentParser(prog="python -m core.explain", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        sections = explain(args.run_dir)
    except FileNotFoundError as exc:
        print(f"anytune: error: {exc}", file=sys.stderr)
        return 2
    for title, lines in sections:
        print(f"{title}:")
        for line in lines:
            print(f"  {line}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
