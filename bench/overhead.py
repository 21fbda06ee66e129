"""Benchmark of the anytune layer itself; prints a table (targets from issue 3).

    python bench/overhead.py [--repeat 3] [--gsm8k ../shared/data/gsm8k/train.jsonl]

1. ``plan_only`` on the whole GSM8K train set (validate + normalise + token stats + plan), the data
   cache off (``ANYTUNE_DATA_CACHE=0``): target <= 1 s.
2. The same with the data cache warm (identical data already prepared once): the sweep case.
3. A config error (``python -m core train.learning_rate=-1``): refused, non-zero exit, target <= 1 s.
4. The default job, ``python -m core``, end to end: target <= 60 s on a 2-core CPU machine.
5. Overhead: the same TRL job through ``python -m core`` against its ejected ``plan/run.sh``: target <= 1 s + 1 %.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], cwd: Path | None = None, expect: int | None = 0, env: dict | None = None) -> float:
    """Wall seconds of ``cmd``; exits the benchmark if its return code is not ``expect``.

    :param expect: the return code the command must end with; None: any non-zero one (an expected failure).
    :param env: variables added to the environment (offline hub variables are always set).
    """
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})})
    elapsed = time.perf_counter() - t
    ok = p.returncode != 0 if expect is None else p.returncode == expect
    if not ok:
        want = "a non-zero exit" if expect is None else f"exit {expect}"
        sys.exit(f"failed (exit {p.returncode}, expected {want}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return elapsed


def main() -> None:
    """Run each measurement ``--repeat`` times and print the medians against their targets."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--gsm8k", default=str(ROOT.parent / "shared/data/gsm8k/train.jsonl"))
    a = ap.parse_args()
    py = [sys.executable, "-m", "core", "offline=true"]
    tmp = Path(tempfile.mkdtemp(prefix="anytune-bench-"))
    rows = []

    gsm8k = py + ["plan_only=true", f"data.train={a.gsm8k}", "data.format=prompt_completion",
                  "data.columns={prompt:question,completion:answer}"]
    plan = [timed(gsm8k + [f"run_dir={tmp}/plan{i}"], env={"ANYTUNE_DATA_CACHE": "0"}) for i in range(a.repeat)]
    rows.append(("plan_only, GSM8K train (7,473 rows)", statistics.median(plan), "<= 1 s",
                 statistics.median(plan) <= 1))

    on = {"ANYTUNE_DATA_CACHE": "1"}
    timed(gsm8k + [f"run_dir={tmp}/warmup"], env=on)  # fills the data cache (or finds it full)
    warm = [timed(gsm8k + [f"run_dir={tmp}/warm{i}"], env=on) for i in range(a.repeat)]
    rows.append(("plan_only, GSM8K, data cache warm", statistics.median(warm), "", True))

    refused = [timed(py + ["train.learning_rate=-1", f"run_dir={tmp}/refused{i}"], expect=None)
               for i in range(a.repeat)]
    rows.append(("config error (python -m core train.learning_rate=-1)", statistics.median(refused), "<= 1 s",
                 statistics.median(refused) <= 1))

    default = [timed(py + [f"run_dir={tmp}/default{i}"]) for i in range(a.repeat)]
    rows.append(("default job (python -m core)", statistics.median(default), "<= 60 s",
                 statistics.median(default) <= 60))

    through, native = [], []
    for i in range(a.repeat):
        run_dir = tmp / f"over{i}"
        through.append(timed(py + [f"run_dir={run_dir}"]))
        for f in ("metrics.jsonl", "result.json"):
            (run_dir / f).unlink()
        native.append(timed(["sh", str(run_dir / "plan/run.sh")]))
    t, n = statistics.median(through), statistics.median(native)
    rows.append(("same job via ejected plan/run.sh", n, "", True))
    rows.append(("overhead of the layer (core - native)", t - n, f"<= {1 + 0.01 * n:.2f} s",
                 t - n <= 1 + 0.01 * n))

    table = Table(title=f"anytune layer benchmark (median of {a.repeat}; {os.cpu_count()} CPUs)")
    for col in ("what", "seconds", "target", "met"):
        table.add_column(col)
    for what, sec, target, ok in rows:
        table.add_row(what, f"{sec:.2f}", target, "yes" if ok else "NO")
    Console().print(table)
    print(json.dumps({what: round(sec, 3) for what, sec, _, _ in rows}))


if __name__ == "__main__":
    main()
