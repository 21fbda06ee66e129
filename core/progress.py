"""What a person sees: a live progress bar fed by metrics.jsonl, and the closing summary."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


@contextlib.contextmanager
def live(label: str) -> Iterator[Any]:
    """Yield a callback that advances a progress bar with each metrics row."""
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=console)
    task = bar.add_task(label, total=None, stats="starting engine…")

    last: dict = {}

    def update(row: dict) -> None:
        last.update(row)
        fields = []
        if "loss" in last:
            fields.append(f"loss {last['loss']:.4f}")
        if "eval_loss" in last:
            fields.append(f"eval {last['eval_loss']:.4f}")
        if last.get("tokens_per_s"):
            fields.append(f"{last['tokens_per_s']:.0f} tok/s")
        bar.update(task, completed=row.get("step", 0), total=row.get("max_steps") or None,
                   stats="  ".join(fields) or "running")

    with bar:
        yield update


def summary(result: dict, run_dir: Path, next_steps: bool = True) -> None:
    """Print the outcome, the run directory's contents and the next commands."""
    status = result["status"]
    colour = {"succeeded": "green", "planned": "cyan", "interrupted": "yellow"}.get(status, "red")
    console.print(f"[bold {colour}]{status}[/]  backend={result.get('backend')}  "
                  f"wall {result.get('wall_seconds', 0):.1f}s")
    if status == "failed":
        console.print(result.get("error", ""), style="red", markup=False, highlight=False, soft_wrap=True)
        if result.get("traceback"):
            console.print(result["traceback"], markup=False, highlight=False)
    final = result.get("final") or {}
    if final:
        console.print("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in final.items()))
    console.print(f"\nRun directory: [bold]{run_dir}[/]")
    if not next_steps:
        return
    for name, what in (("config.yaml", "resolved config (secrets redacted)"),
                       ("data/", "normalised records, chat template, stats.json"),
                       ("plan/", "native engine files and run.sh (runs without anytune)"),
                       ("metrics.jsonl", "one row per logged step"),
                       ("result.json", "status, final metrics, artefacts, versions, hardware"),
                       ("artifacts/", "adapter or model (safetensors) + tokenizer"),
                       ("logs/", "the engine's own stdout/stderr")):
        if (run_dir / name.rstrip("/")).exists():
            console.print(f"  {name:<14} {what}")
    if next_steps and status in ("succeeded", "planned"):
        console.print("\nNext:", highlight=False)
        for cmd, what in (("python -m core -m train.learning_rate=1e-3,5e-3", "a sweep, each job isolated"),
                          ("python -m core method=dpo data=demo_pref", "preference tuning"),
                          ("python -m core data.train=my.jsonl model.name_or_path=/my/model", "your own"),
                          ("python -m core.backends", "engines and what they support")):
            console.print(f"  {cmd}\n      [dim]# {what}[/]", highlight=False, soft_wrap=True)
