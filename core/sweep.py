"""Hydra callback that records a multirun: ``summary.json``, a table of every job (failed ones too) and the
comparison report (``core.compare``: report.md, report.html)."""
from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from core import compare, runproto


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """The result.json of every job under a sweep directory, in job order (rebuilt from disk alone)."""
    rows = []
    for path in sorted(sweep_dir.glob("*/result.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        r = runproto.read_json(str(path))
        final = r.get("final") or {}
        metrics = path.parent / "metrics.jsonl"
        speeds = [m["tokens_per_s"] for m in runproto.read_jsonl(str(metrics)) if m.get("tokens_per_s")] \
            if metrics.exists() else []
        rows.append({"job": path.parent.name, "backend": r.get("backend"), "status": r.get("status"),
                     "first_loss": final.get("first_loss"), "last_loss": final.get("last_loss"),
                     "eval_loss": final.get("eval_loss"),
                     "tokens_per_s": statistics.median(speeds) if speeds else None,
                     "peak_memory_mb": r.get("peak_memory_mb"), "train_seconds": r.get("train_seconds"),
                     "wall_seconds": r.get("wall_seconds"),
                     "error": (r.get("error") or "").splitlines()[0][:120] if r.get("error") else None})
    return rows


#: summary field -> table heading; sized to fit 80 columns (summary.json holds every field)
COLUMNS = [("job", "job"), ("status", "status"), ("first_loss", "loss₁"), ("last_loss", "loss"),
           ("eval_loss", "eval"), ("tokens_per_s", "tok/s"), ("peak_memory_mb", "MiB"), ("wall_seconds", "wall s")]


def redact_multirun(sweep_dir: Path) -> None:
    """Replace secret-looking values (``backend.native.hub_token=...``) in the ``multirun.yaml`` Hydra's sweepers
    write into the sweep directory: in the sweep's config and in its command-line overrides (atomically; a no-op
    when it holds none)."""
    import yaml

    from core.config import SECRET

    path = Path(sweep_dir) / "multirun.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return
    changed = []

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: walk_value(k, v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str) and "=" in node and SECRET.search(node.split("=", 1)[0]):
            changed.append(node)  # an override: key=value
            return node.split("=", 1)[0] + "=***"
        return node

    def walk_value(key: Any, value: Any) -> Any:
        if SECRET.search(str(key)) and isinstance(value, str) and value and value != "***" \
                and not value.startswith("${"):
            changed.append(key)
            return "***"
        return walk(value)

    data = walk(data)
    if changed:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        os.replace(tmp, path)


def _notify(hook: str, **kwargs: Any) -> None:
    """Broadcast a sweep hook to the plugins (trackers open and close a sweep's parent run)."""
    from core.plugins import notify, registry

    notify(registry(), hook, **kwargs)


class SweepReport(Callback):
    """On multirun start: ``on_sweep_start``; on multirun end: write ``<sweep dir>/summary.json``, print one row
    per job, write the comparison report, then ``on_sweep_end``."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        from core.config import redacted

        cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        try:
            cfg = redacted(cfg)
        except Exception:  # an interpolation only a job can resolve: each job's run records its own config
            cfg = {}
        _notify("on_sweep_start", sweep_dir=str(Path(config.hydra.sweep.dir).resolve()), config=cfg)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        # the sweeper wrote multirun.yaml just before launching the jobs: no secret stays in it
        if config.hydra.mode and config.hydra.mode.name == "MULTIRUN":
            redact_multirun(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from rich.table import Table

        from core.progress import out

        sweep_dir = Path(config.hydra.sweep.dir)
        redact_multirun(sweep_dir)
        rows = collect(sweep_dir)
        runproto.atomic_write_json(str(sweep_dir / "summary.json"), rows)
        table = Table(title=f"sweep {sweep_dir}", title_justify="left", box=None, pad_edge=False)
        for col, head in COLUMNS:
            table.add_column(head, no_wrap=True, overflow="ellipsis", max_width=24 if col == "job" else None,
                             justify="left" if col in ("job", "status") else "right")
        for r in rows:
            table.add_row(*[compare.cell(r[c]) for c, _ in COLUMNS])
        out.print(table)
        for r in rows:  # errors: one line each, with where to look
            if r["error"]:
                out.print(f"{r['job']}: {r['error']}  ({sweep_dir / r['job'] / 'logs'})", markup=False,
                          highlight=False, soft_wrap=True)
        out.print(f"every field: {sweep_dir / 'summary.json'}", markup=False, highlight=False, soft_wrap=True)
        if rows:
            try:  # the comparison report: table, fairness flags, plots (report.md, report.html)
                report = compare.write([sweep_dir], sweep_dir)
            except Exception as exc:  # the sweep's results stand without it
                out.print(f"comparison report failed: {exc}", markup=False, highlight=False)
            else:
                out.print(f"{report['verdict']}\nreport: {sweep_dir / compare.REPORT_HTML}", markup=False,
                          highlight=False, soft_wrap=True)
        _notify("on_sweep_end", sweep_dir=str(sweep_dir.resolve()), rows=rows)
