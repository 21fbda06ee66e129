"""The comparison report: one row per job, loss/throughput/memory/score plots, and what differs between the jobs.

``python -m core.compare DIR [DIR ...] [--out DIR]`` where each DIR is a run directory or a sweep directory
(its jobs). A multirun writes the same report into its sweep directory when it ends. Everything is read
from the run directories alone (``result.json``, ``metrics.jsonl``, ``config.yaml``, ``data/``, ``eval.json``),
so a report can be rebuilt at any time.

Writes ``report.md`` (a table and the plots as PNG files beside it), ``report.html`` (the same, one
self-contained page with the plots embedded) and ``report.json`` (the rows and the flags).
"""
from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from core import runproto

REPORT_MD, REPORT_HTML, REPORT_JSON, PLOTS = "report.md", "report.html", "report.json", "plots"
"""What :func:`write` leaves in its output directory."""


# -- one job --------------------------------------------------------------------------------------------


def _sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else None


@dataclass
class Job:
    """One run directory as the report reads it."""

    run_dir: Path
    result: dict[str, Any]
    config: Any
    """config.yaml (a DictConfig)."""
    metrics: list[dict[str, Any]]
    scores: dict[str, Any] = field(default_factory=dict)
    """``eval.json``: evaluator name -> its scores."""

    @classmethod
    def load(cls, run_dir: Path) -> "Job":
        """Read a run directory (it must hold ``result.json``)."""
        from omegaconf import OmegaConf

        run_dir = Path(run_dir)
        cfg = run_dir / runproto.CONFIG
        metrics, scores = run_dir / runproto.METRICS_FILE, run_dir / runproto.EVAL_FILE
        return cls(run_dir, runproto.read_json(str(run_dir / runproto.RESULT)),
                   OmegaConf.load(cfg) if cfg.is_file() else OmegaConf.create({}),
                   runproto.read_jsonl(str(metrics)) if metrics.is_file() else [],
                   runproto.read_json(str(run_dir / runproto.EVAL_FILE)) if scores.is_file() else {})

    @property
    def name(self) -> str:
        """The run directory's name (a sweep's job: ``<num>-<backend>-<method>``)."""
        return self.run_dir.name

    def get(self, dotted: str) -> Any:
        """A config value by dotted key (``train.seed``), or None."""
        from omegaconf import OmegaConf

        return OmegaConf.select(self.config, dotted)

    def losses(self, x: str) -> tuple[list[float], list[float]]:
        """(x, training loss) of every logged step; ``x`` is a metrics column: step, tokens or elapsed_s."""
        pts = [(r[x], r["loss"]) for r in self.metrics if "loss" in r and r.get(x) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    def effective_batch(self) -> int | None:
        """Examples per optimiser step: batch_size × grad_accum × devices × nodes."""
        parts = [self.get(k) for k in ("train.batch_size", "train.grad_accum")]
        if not all(parts):
            return None
        return parts[0] * parts[1] * (self.get("train.devices") or 1) * (self.get("train.nodes") or 1)

    def tokens_per_s(self) -> float | None:
        """Median throughput after warm-up (the first logged step is left out when there are others)."""
        speeds = [r["tokens_per_s"] for r in self.metrics if r.get("tokens_per_s")]
        speeds = speeds[1:] if len(speeds) > 1 else speeds
        return statistics.median(speeds) if speeds else None

    def flat_scores(self) -> dict[str, float]:
        """Every evaluator's numeric scores as ``<evaluator>.<metric>`` -> value."""
        out: dict[str, float] = {}
        for name, scores in (self.scores or self.result.get("eval") or {}).items():
            if isinstance(scores, dict) and "metric" in scores and "value" in scores:
                out[f"{name}.{scores['metric']}"] = scores["value"]
                continue
            for key, value in (scores or {}).items() if isinstance(scores, dict) else ():
                if isinstance(value, dict) and isinstance(value.get("value"), (int, float)):
                    out[f"{name}.{key}"] = value["value"]
                elif isinstance(value, (int, float)) and not isinstance(value, bool):
                    out[f"{name}.{key}"] = value
        return out

    def row(self) -> dict[str, Any]:
        """The job's row of the report (``report.json`` holds it whole)."""
        r, final = self.result, self.result.get("final") or {}
        heldout = final.get("eval_loss")
        if heldout is None:
            heldout = self.flat_scores().get("heldout.loss")
        cost = r.get("cost_usd") if r.get("cost_usd") is not None else (r.get("cost") or {}).get("usd") \
            if isinstance(r.get("cost"), dict) else r.get("cost")
        return {"job": self.name, "engine": r.get("backend"), "version": r.get("engine_version"),
                "status": r.get("status"), "wall_s": r.get("wall_seconds"),
                "first_step_s": r.get("time_to_first_step_s"), "tokens_per_s": self.tokens_per_s(),
                "peak_memory_mb": r.get("peak_memory_mb"), "trainable": r.get("trainable_parameters"),
                "tokens": final.get("tokens"), "steps": final.get("steps"),
                "effective_batch": self.effective_batch(),
                "train_loss": final.get("last_loss"), "heldout_loss": heldout, "cost_usd": cost,
                "scores": self.flat_scores(), "error": next(iter((r.get("error") or "").splitlines()), "")[:160] or None}


# -- fairness --------------------------------------------------------------------------------------------

FAIRNESS: list[tuple[str, str, Callable[[Job], Any]]] = [
    ("tokens", "training tokens", lambda j: (j.result.get("final") or {}).get("tokens")),
    ("steps", "optimiser steps", lambda j: (j.result.get("final") or {}).get("steps")),
    ("trainable", "trainable parameters", lambda j: j.result.get("trainable_parameters")),
    ("effective_batch", "effective batch", lambda j: j.effective_batch()),
    ("max_length", "sequence length", lambda j: j.get("train.max_length")),
    ("packing", "packing", lambda j: j.get("method.packing")),
    ("loss_normalisation", "loss normalisation", lambda j: j.result.get("loss_normalisation")),
    ("method", "method", lambda j: j.get("method.name")),
    ("adapter", "adapter", lambda j: f"{j.get('peft.type')} r={j.get('peft.r')}"
     if j.get("peft.type") not in (None, "none") else j.get("peft.type")),
    ("template", "chat template hash", lambda j: _sha(j.run_dir / runproto.TEMPLATE)),
    ("data", "data hash", lambda j: _sha(j.run_dir / runproto.TRAIN)),
    ("seed", "seed", lambda j: j.get("train.seed")),
]
"""What must be equal for a like-for-like comparison: (key, what it is, how a job's value is read)."""


@dataclass
class Flag:
    """One thing that differs between the jobs compared."""

    key: str
    label: str
    values: dict[str, Any]
    """job -> its value (None: not known for that job)."""

    def reason(self) -> str:
        """One line: what differs and each job's value."""
        return f"{self.label} differs: " + ", ".join(f"{job} {value}" for job, value in self.values.items())


TRAINED = ("succeeded", "interrupted")
"""Statuses of jobs that trained: the ones the fairness flags compare."""


def trained_of(rows: list[dict[str, Any]]) -> int:
    """How many of the report's rows trained."""
    return sum(r["status"] in TRAINED for r in rows)


def fairness(jobs: list[Job]) -> list[Flag]:
    """What differs between the jobs that trained (status succeeded or interrupted): one flag per field of
    :data:`FAIRNESS` whose known values are not all equal."""
    trained = [j for j in jobs if j.result.get("status") in TRAINED]
    flags = []
    for key, label, read in FAIRNESS:
        values = {j.name: read(j) for j in trained}
        if len({repr(v) for v in values.values() if v is not None}) > 1:
            flags.append(Flag(key, label, values))
    return flags


# -- output -----------------------------------------------------------------------------------------------

COLUMNS = [("job", "job"), ("engine", "engine"), ("status", "status"), ("wall_s", "wall s"),
           ("first_step_s", "to 1st step s"), ("tokens_per_s", "tokens/s"), ("peak_memory_mb", "peak MiB"),
           ("trainable", "trainable"), ("tokens", "tokens"), ("effective_batch", "eff. batch"),
           ("train_loss", "train loss"), ("heldout_loss", "held-out loss"), ("cost_usd", "cost $")]
"""Report columns (row key, heading); each evaluator score adds one."""
FLAGGED_COLUMNS = {"tokens": "tokens", "trainable": "trainable", "effective_batch": "effective_batch"}
"""Columns marked ≠ when their fairness field differs."""


def cell(value: Any) -> str:
    """A table cell: 4 significant digits; large numbers whole, with thousands separators."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(rows: list[dict[str, Any]], flags: list[Flag]) -> tuple[list[str], list[list[str]]]:
    """(headings, cells) of the report's table; a cell whose field differs between jobs is marked ≠."""
    flagged = {FLAGGED_COLUMNS[f.key] for f in flags if f.key in FLAGGED_COLUMNS}
    score_keys = sorted({k for r in rows for k in r["scores"]})
    heads = [h for _, h in COLUMNS] + score_keys
    body = []
    for r in rows:
        engine = f"{r['engine']} {r['version']}" if r.get("version") else str(r.get("engine"))
        cells = [engine if k == "engine" else cell(r.get(k)) + (" ≠" if k in flagged and r.get(k) is not None
                                                               else "") for k, _ in COLUMNS]
        body.append(cells + [cell(r["scores"].get(k)) for k in score_keys])
    return heads, body


def plots(jobs: list[Job]) -> dict[str, bytes]:
    """PNG figures: loss against step, training tokens and wall time (every job on one axis); throughput and
    peak-memory bars; evaluator scores. Name -> PNG bytes; a figure with nothing to show is left out."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    rows = {j.name: j.row() for j in jobs}

    def save(name: str, fig) -> None:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        out[name] = buf.getvalue()

    for x, label, name in (("step", "optimiser step", "loss_vs_step"), ("tokens", "training tokens", "loss_vs_tokens"),
                           ("elapsed_s", "wall time since the first step (s)", "loss_vs_time")):
        curves = [(j.name, *j.losses(x)) for j in jobs]
        if not any(xs for _, xs, _ in curves):
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for job, xs, ys in curves:
            if xs:
                ax.plot(xs, ys, marker="." if len(xs) < 40 else None, label=job)
        ax.set_xlabel(label)
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(name, fig)
    for key, label, name in (("tokens_per_s", "tokens/s (median after warm-up)", "throughput"),
                             ("peak_memory_mb", "peak memory (MiB)", "memory")):
        bars = [(name, row[key]) for name, row in rows.items() if row[key] is not None]
        if bars:
            fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(bars)))
            ax.barh([b[0] for b in bars], [b[1] for b in bars])
            ax.set_xlabel(label)
            ax.invert_yaxis()
            save(name, fig)
    scores = [(name, row["scores"]) for name, row in rows.items()]
    keys = sorted({k for _, s in scores for k in s})
    if keys:
        fig, ax = plt.subplots(figsize=(7, 0.8 + 0.45 * len(keys) * len(scores)))
        width, names = 0.8 / max(1, len(scores)), [n for n, _ in scores]
        for i, (name, s) in enumerate(scores):
            ax.barh([k + i * width for k in range(len(keys))], [s.get(k, 0) for k in keys], height=width,
                    label=name)
        ax.set_yticks([k + 0.4 - width / 2 for k in range(len(keys))], keys)
        ax.invert_yaxis()
        ax.legend(fontsize=8, labels=names)
        save("scores", fig)
    return out


def markdown(rows: list[dict[str, Any]], flags: list[Flag], figures: list[str]) -> str:
    """The report as Markdown: verdict, table, errors, plots (PNG files under ``plots/``)."""
    heads, body = table(rows, flags)
    lines = ["# anytune comparison", "", verdict(flags, trained_of(rows)), ""]
    lines += ["- " + f.reason() for f in flags] + ([""] if flags else [])
    lines += ["| " + " | ".join(heads) + " |", "| " + " | ".join("---" for _ in heads) + " |"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
    errors = [f"- {r['job']}: {r['error']}" for r in rows if r.get("error")]
    lines += ["", "## Errors", "", *errors] if errors else []
    for name in figures:
        lines += ["", f"![{name}]({PLOTS}/{name}.png)"]
    return "\n".join(lines) + "\n"


def verdict(flags: list[Flag], trained: int = 2) -> str:
    """One line: like for like, or not and why (``trained``: how many jobs trained, so were compared)."""
    if trained < 2:
        return "**Nothing to compare**: fewer than two of these jobs trained."
    if not flags:
        return "**Like for like**: " + ", ".join(label for _, label, _ in FAIRNESS) + " are equal across the jobs."
    return "**Not like for like**: " + "; ".join(f.label for f in flags) + " differ (details below)."


HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>anytune comparison</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
.wide{overflow-x:auto}table{border-collapse:collapse;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:nth-child(-n+3){text-align:left}.differs{background:#fff3cd}
.verdict{padding:8px 12px;border-radius:4px}.ok{background:#d4edda}.not{background:#fff3cd}
img{max-width:100%;margin:1em 0;border:1px solid #eee}
</style></head><body>
<h1>anytune comparison</h1>
<p class="verdict {{ 'ok' if not flags and not verdict.startswith('Nothing') else 'not' }}">{{ verdict }}</p>
{% if flags %}<ul>{% for f in flags %}<li>{{ f.reason() }}</li>{% endfor %}</ul>{% endif %}
<div class="wide"><table id="jobs"><thead><tr>{% for h in heads %}<th>{{ h }}</th>{% endfor %}</tr></thead><tbody>
{% for cells in body %}<tr>{% for c in cells %}<td{% if c.endswith(' ≠') %} class="differs"{% endif %}>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table></div>
{% if errors %}<h2>Errors</h2><ul>{% for e in errors %}<li>{{ e }}</li>{% endfor %}</ul>{% endif %}
{% for name, data in figures %}<h2>{{ name.replace('_', ' ') }}</h2><img alt="{{ name }}" src="data:image/png;base64,{{ data }}">
{% endfor %}</body></html>
"""
"""The self-contained HTML page (Jinja2; plots embedded as base64 PNG)."""


def html(rows: list[dict[str, Any]], flags: list[Flag], figures: dict[str, bytes]) -> str:
    """The report as one self-contained HTML page."""
    import base64

    import jinja2

    heads, body = table(rows, flags)
    env = jinja2.Environment(autoescape=True)
    return env.from_string(HTML).render(
        heads=heads, body=body, flags=flags, verdict=verdict(flags, trained_of(rows)).replace("**", ""),
        errors=[f"{r['job']}: {r['error']}" for r in rows if r.get("error")],
        figures=[(n, base64.b64encode(b).decode()) for n, b in figures.items()])


def run_dirs(paths: list[Path]) -> list[Path]:
    """Run directories named, or found one level down in a sweep directory (in job order).

    :raises FileNotFoundError: a path that is neither.
    """
    out = []
    for p in map(Path, paths):
        if (p / runproto.RESULT).is_file():
            out.append(p)
            continue
        jobs = sorted((d for d in p.glob("*") if (d / runproto.RESULT).is_file()),
                      key=lambda d: (len(d.name), d.name))
        if not jobs:
            raise FileNotFoundError(f"{p} is neither a run directory nor a sweep directory (no result.json)")
        out += jobs
    return out


def write(paths: list[Path], out_dir: Path) -> dict[str, Any]:
    """Build the report of the run or sweep directories ``paths`` into ``out_dir``; returns ``report.json``'s
    content (rows, flags, verdict)."""
    jobs = [Job.load(d) for d in run_dirs(paths)]
    rows, flags = [j.row() for j in jobs], fairness(jobs)
    figures = plots(jobs)
    out_dir = Path(out_dir)
    (out_dir / PLOTS).mkdir(parents=True, exist_ok=True)
    for name, png in figures.items():
        (out_dir / PLOTS / f"{name}.png").write_bytes(png)
    runproto.atomic_write_text(str(out_dir / REPORT_MD), markdown(rows, flags, list(figures)))
    runproto.atomic_write_text(str(out_dir / REPORT_HTML), html(rows, flags, figures))
    report = {"rows": rows, "flags": [{"key": f.key, "label": f.label, "values": f.values} for f in flags],
              "verdict": verdict(flags, trained_of(rows)).replace("**", ""), "figures": sorted(figures)}
    runproto.atomic_write_json(str(out_dir / REPORT_JSON), report)
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m core.compare DIR [DIR ...] [--out DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m core.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run directories and/or sweep directories")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the report goes (default: the sweep directory, or ./compare for run directories)")
    args = parser.parse_args(argv)
    out = args.out or (args.dirs[0] if len(args.dirs) == 1 and not (args.dirs[0] / runproto.RESULT).is_file()
                       else Path("compare"))
    try:
        report = write(args.dirs, out)
    except FileNotFoundError as exc:
        print(f"anytune: error: {exc}", file=sys.stderr)
        return 2
    print(report["verdict"])
    print(out / REPORT_HTML)
    return 0


if __name__ == "__main__":
    sys.exit(main())
