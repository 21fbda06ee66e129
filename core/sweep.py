"""Hydra callback that records a multirun: ``summary.json``, a table of every job (failed ones too) and the
comparison report (``core.compare``: report.md, report.html)."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from core import runproto


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


def cell(value: Any) -> str:
    """A table cell: 4 significant digits, large numbers whole."""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return "" if value is None else str(value)


class SweepReport(Callback):
    """On multirun end: write ``<sweep dir>/summary.json`` and print one row per job."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from rich.table import Table

        from core.progress import out

        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect(sweep_dir)
        runproto.atomic_write_json(str(sweep_dir / "summary.json"), rows)
        table = Table(title=f"sweep {sweep_dir}", title_justify="left", box=None, pad_edge=False)
        for col, head in COLUMNS:
            table.add_column(head, no_wrap=True, overflow="ellipsis", max_width=24 if col == "job" else None,
                             justify="left" if col in ("job", "status") else "right")
        for r in rows:
            table.add_row(*[cell(r[c]) for c, _ in COLUMNS])
        out.print(table)
        for r in rows:  # errors: one line each, with where to look
            if r["error"]:
                out.print(f"{r['job']}: {r['error']}  ({sweep_dir / r['job'] / 'logs'})", markup=False,
                          highlight=False, soft_wrap=True)
        out.print(f"every field: {sweep_dir / 'summary.json'}", markup=False, highlight=False, soft_wrap=True)
        if rows:
            from core import compare

            try:  # the comparison report: table, fairness flags, plots (report.md, report.html)
                report = compare.write([sweep_dir], sweep_dir)
            except Exception as exc:  # the sweep's results stand without it
                out.print(f"comparison report failed: {exc}", markup=False, highlight=False)
            else:
                out.print(f"{report['verdict']}\nreport: {sweep_dir / compare.REPORT_HTML}", markup=False,
                          highlight=False, soft_wrap=True)
