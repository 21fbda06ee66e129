"""What a person sees: a live progress bar fed by metrics.jsonl, and the closing summary."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from core import runproto

console = Console(stderr=True)
"""Progress and errors: stderr."""
out = Console()
"""The summary, the run directory and the next commands: stdout (``python -m core > out.txt`` keeps them)."""


def error(message: str) -> None:
    """An error as one plain, copyable message on stderr."""
    console.print("anytune: error:", style="bold red", end=" ")
    console.print(message, markup=False, highlight=False, soft_wrap=True)


class Display:
    """The one live progress display of a job: a bar per step, started lazily at the first step.

    Nothing is drawn before a step starts, so what comes first (a managed environment
    created on first use, a config error) prints plainly. Use as a context manager and
    pass it to ``runner.run(display=...)``.
    """

    def __init__(self, label: str, enabled: bool = True):
        """:param label: the job's label (``backend:method``, with the sweep job number);
        :param enabled: false draws nothing (``quiet=true``)."""
        self.label, self.enabled = label, enabled
        self.bar: Progress | None = None
        self.tasks: dict[str, Any] = {}
        self.last: dict[str, dict] = {}

    def __enter__(self) -> "Display":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, step: str, row: dict | None) -> None:
        """A step started (``row`` None), wrote a metrics row, or ended (``{"status": ...}``)."""
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=console)
            self.bar.start()
        if step not in self.tasks:
            what = step.split(":", 1)[-1] if step.startswith("trainer:") else step
            self.tasks[step] = self.bar.add_task(f"{self.label} {what}", total=None, stats="starting…")
            self.last[step] = {}
        if row is None:
            return
        if "status" in row:  # the step ended
            colour = "green" if row["status"] == "succeeded" else "red"
            self.bar.update(self.tasks[step], total=self._total(step), completed=self._total(step),
                            stats=f"[{colour}]{row['status']}[/]  " + self._stats(step))
            return
        self.last[step].update(row)
        self.bar.update(self.tasks[step], completed=row.get("step", 0), total=row.get("max_steps") or None,
                        stats=self._stats(step) or "running")

    def _total(self, step: str) -> int:
        """The bar's length once the step ended: its planned steps, else 1."""
        return self.last[step].get("max_steps") or self.last[step].get("step") or 1

    def _stats(self, step: str) -> str:
        """Latest loss, eval loss and throughput of a step."""
        last = self.last[step]
        fields = []
        if "loss" in last:
            fields.append(f"loss {last['loss']:.4f}")
        if "eval_loss" in last:
            fields.append(f"eval {last['eval_loss']:.4f}")
        if last.get("tokens_per_s"):
            fields.append(f"{last['tokens_per_s']:.0f} tok/s")
        return "  ".join(fields)


def _fmt(values: dict) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def _fmt_scores(scores: dict) -> str:
    """One evaluator's scores (``core.scores``' schema) as ``metric=value ±stderr (n=N)``."""
    out = []
    for metric, s in scores.items():
        if not isinstance(s, dict) or "value" not in s:
            out.append(_fmt({metric: s}))
            continue
        err = f" ±{s['stderr']:.2g}" if isinstance(s.get("stderr"), (int, float)) else ""
        out.append(f"{metric}={s['value']:.4g}{err} (n={s.get('n')})")
    return "  ".join(out)


def next_commands(result: dict, run_dir: Path) -> list[tuple[str, str]]:
    """(command, what it does) that fit what just ran."""
    status, method = result.get("status"), (result.get("data") or {}).get("method")
    if status == "planned":
        return [(f"sh {run_dir / 'plan' / 'run.sh'}", "run the plan as written, without anytune"),
                ("python -m core.backends", "engines and what they support")]
    artifacts = [a for a in (result.get("artifacts") or {}).values() if isinstance(a, dict)]
    remote = next((a for a in artifacts if a.get("attach")), None)  # a remote job that goes on without us
    if status == "interrupted" and remote:
        return [(remote["attach"], "follow the remote job, which goes on running (it is paid for), to its end"),
                *([(remote["cancel"], "cancel it instead")] if remote.get("cancel") else [])]
    if status in ("failed", "interrupted"):
        failed = next((s for s in result.get("steps") or [] if s["status"] in ("failed", "interrupted")), None)
        stem = "train" if not failed or failed["kind"] == "trainer" else \
            f"{'export' if failed['kind'] == 'exporter' else 'eval'}-{failed['name']}"
        log = run_dir / "logs" / f"{stem}.stderr.log"
        cmds = [(f"less {log}", "the failed step's whole log")] if log.exists() else []
        if runproto.last_checkpoint(str(run_dir)):
            cmds.insert(0, (f"python -m core resume={run_dir}", "continue from its last checkpoint"))
        return cmds + [("python -m core ... debug=true", "the same job with full tracebacks for anytune's own errors")]
    held_out = ((result.get("data") or {}).get("rows") or {}).get("eval")
    hosted = (result.get("artifacts") or {}).get("model")
    if isinstance(hosted, dict) and "id" in hosted and "path" not in hosted:
        # the trainer left a hosted model: nothing local to merge; its provider's evaluator scores it, if installed
        from core.plugins import registry

        scorer = hosted.get("provider")
        return [(f"python -m core.after {run_dir} eval=[{scorer}]", f"score the hosted model {hosted['id']} on "
                 "the held-out data")] if held_out and scorer in registry().evaluators else []
    cmds = [(f"python -m core.after {run_dir} export=[merged] eval=[heldout]",
             "merge the adapter and score held-out loss, without training again") if held_out else
            (f"python -m core.after {run_dir} export=[merged]", "the adapter merged into the base, without training again")]
    if method == "sft":
        cmds.append(("python -m core method=dpo data=demo_pref", "preference tuning"))
    cmds += [("python -m core -m train.learning_rate=1e-4,3e-4", "a sweep, each job isolated"),
             ("python -m core data.train=my.jsonl model.name_or_path=/my/model", "your model, your data")]
    return cmds


def summary(result: dict, run_dir: Path, next_steps: bool = True, quiet: bool = False) -> None:
    """Print the outcome (stdout), the error once with its log tail (stderr), the run directory's contents
    and next commands that fit what just ran. ``quiet``: the run directory alone, on stdout."""
    if quiet:
        print(run_dir)
        return
    status = result["status"]
    colour = {"succeeded": "green", "planned": "cyan", "interrupted": "yellow"}.get(status, "red")
    out.print(f"[bold {colour}]{status}[/]  backend={escape(str(result.get('backend')))}  "
              f"wall {result.get('wall_seconds', 0):.1f}s")
    if status == "failed":
        error(result.get("error", ""))
        if result.get("traceback"):
            console.print(result["traceback"], markup=False, highlight=False)
    if status == "planned" and result.get("data"):  # plan_only: what the data holds (data/stats.json)
        from core.data import report

        out.print(report.text(result["data"]), markup=False, highlight=False, soft_wrap=True)
        out.print(f"  label view: python -m core.data show {run_dir}", markup=False, highlight=False, soft_wrap=True)
    if status == "planned" and result.get("estimate"):  # plan_only: what the job will take (core.estimate)
        from core import estimate

        out.print(estimate.table(result["estimate"]))
    if result.get("final"):
        out.print("  " + _fmt(result["final"]), markup=False, highlight=False)
    for s in result.get("steps") or []:
        if s["status"] not in ("succeeded", "skipped") and status == "succeeded":
            error(f"{s['kind']} {s['name']}: {s['status']}  {s.get('error') or ''}")
    for name, scores in (result.get("eval") or {}).items():
        out.print(f"  eval {name}: {_fmt_scores(scores)}", markup=False, highlight=False)
    out.print(f"\nRun directory: [bold]{escape(str(run_dir))}[/]")
    if not next_steps:
        return
    for name, what in (("config.yaml", "resolved config (secrets redacted)"),
                       ("data/", "normalised records, chat template, stats.json"),
                       ("plan/", "native engine files and run.sh (runs without anytune)"),
                       ("metrics.jsonl", "one row per logged step"),
                       ("result.json", "status, final metrics, artefacts, versions, hardware"),
                       ("eval.json", "every evaluator's scores"),
                       ("artifacts/", "adapter or model (safetensors) + tokenizer; exports"),
                       ("logs/", "each step's own stdout/stderr")):
        if (run_dir / name.rstrip("/")).exists():
            out.print(f"  {name:<14} {what}", highlight=False)
    out.print("\nNext:", highlight=False)
    for cmd, what in next_commands(result, run_dir):
        out.print(f"  {escape(cmd)}\n      [dim]# {what}[/]", highlight=False, soft_wrap=True)
