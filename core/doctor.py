"""``python -m core.doctor``: what this machine has for anytune, and the one command that fixes each problem.

Python, torch and its build, GPUs and their memory, every installed backend, exporter and evaluator with its
engine version, the managed environments (exists, pins satisfied, incomplete), optional tools, offline
settings and free disk. Engines are probed in their own interpreters, never imported here. Exits 1 when
something the default job needs is missing (``--json`` prints the checks as JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

OK, WARN, FAIL = "ok", "warn", "fail"
"""A check's status: fine; a problem for some jobs; the default job cannot run."""

TORCH_PROBE = """import json, torch
gpus = [{"name": torch.cuda.get_device_name(i), "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
        for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
print(json.dumps({"version": torch.__version__, "cuda": torch.version.cuda, "gpus": gpus}))"""
"""Run in the current interpreter's own process: torch, its CUDA build and the GPUs it sees."""


@dataclass
class Check:
    """One line of the diagnosis."""

    name: str
    status: str
    detail: str
    fix: str = ""
    """The one command (or setting) that fixes it; empty when nothing is to fix."""


def check_python() -> Check:
    v = sys.version_info
    ok = v >= (3, 10)
    return Check("python", OK if ok else FAIL, f"{sys.version.split()[0]} at {sys.executable}",
                 "" if ok else "use Python 3.10 or newer")


def check_torch(python: str = sys.executable) -> list[Check]:
    """torch and its build, and the GPUs it sees (probed in ``python``'s own process)."""
    proc = subprocess.run([python, "-c", TORCH_PROBE], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return [Check("torch", FAIL, f"not importable in {python}: {proc.stderr.strip().splitlines()[-1:]}",
                      "pip install torch")]
    info = json.loads(proc.stdout)
    build = f"CUDA {info['cuda']}" if info["cuda"] else "CPU build"
    out = [Check("torch", OK, f"{info['version']} ({build})")]
    gpus = info["gpus"]
    out.append(Check("gpus", OK if gpus else WARN,
                     "; ".join(f"{g['name']} {g['memory_gib']} GiB" for g in gpus) if gpus else
                     "none visible: CPU jobs only (backends that need a GPU are refused at validation)"))
    return out


def check_steps(default_backend: str) -> list[Check]:
    """Every registered backend, exporter and evaluator: its engine found (and where), or how to get it."""
    from core import envs, plugins
    from core.backends import probe

    reg = plugins.registry()
    out = []
    for group in ("backend", "export", "eval"):
        for name, cls in sorted(reg.group(group).items()):
            label = f"{group} {name}"
            try:
                step = probe(name, cls)
                version = step.engine_version()
                where = step.python()
            except Exception as exc:  # a broken plugin must not stop the diagnosis
                out.append(Check(label, FAIL if name == default_backend else WARN, f"{type(exc).__name__}: {exc}"))
                continue
            if version is not None or not cls.engine_distribution:
                detail = f"{cls.engine_distribution} {version}" if cls.engine_distribution else "no engine needed"
                out.append(Check(label, OK, f"{detail} ({where})"))
                continue
            needed = FAIL if group == "backend" and name == default_backend else WARN
            if getattr(cls, "environment", None):
                env = envs.of(step)
                problems = envs.check(step) if env.path.exists() else []
                detail = ("; ".join(problems) if problems else
                          f"its environment {env.path} does not exist (created on first use)")
                fix = f"{env.create_command()} --force" if problems else env.create_command()
                out.append(Check(label, needed, detail, fix))
            else:
                out.append(Check(label, needed, f"{cls.engine_distribution} is not installed in {where}",
                                 cls.install_hint or f"pip install {cls.engine_distribution}"))
    for name, error in reg.broken.items():
        out.append(Check(f"plugin {name}", WARN, f"failed to load: {error}",
                         "reinstall the distribution that provides it (python -m core.backends names its source)"))
    return out


def check_envs() -> list[Check]:
    """Managed environments on disk: ready or incomplete (a creation that did not finish)."""
    from core import envs

    out = []
    for row in envs.list_envs():
        if row["state"] == "ready":
            out.append(Check(f"environment {row['name']}", OK, f"{row['size_mb']} MiB at {row['path']}"))
        else:
            out.append(Check(f"environment {row['name']}", WARN, f"incomplete at {row['path']}",
                             f"python -m core.envs create {row['backend']} --force"))
    return out


def check_tools() -> list[Check]:
    """Optional tools: a headless browser (the comparison report's page test)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    return [Check("chromium", OK if browser else WARN, browser or "absent (only the report page's browser test needs it)",
                  "" if browser else "apt-get install chromium")]


def check_offline() -> Check:
    flags = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
             if k in os.environ}
    home = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
    return Check("offline", OK, (", ".join(f"{k}={v}" for k, v in flags.items()) or "hub allowed") +
                 f"; hub cache {home} (offline=true in a job keeps every library away from the hub)")


def check_disk(path: Path, low_gib: float = 10.0) -> Check:
    """Free space where run directories go."""
    path = path if path.exists() else Path.cwd()
    free = shutil.disk_usage(path).free / 2**30
    return Check("disk", OK if free >= low_gib else WARN, f"{free:.1f} GiB free at {path.resolve()}",
                 "" if free >= low_gib else "free space or set run_dir= elsewhere")


def default_backend() -> str:
    """The backend ``python -m core`` runs with no arguments (conf/config.yaml)."""
    from core import config

    return str(config.compose([]).backend.name)


def diagnose() -> list[Check]:
    """Every check, in the order printed."""
    backend = default_backend()
    return [check_python(), *check_torch(), *check_steps(backend), *check_envs(), *check_tools(), check_offline(),
            check_disk(Path("runs"))]


def main(argv: list[str] | None = None) -> int:
    """Print the checks; 1 when the default job cannot run."""
    parser = argparse.ArgumentParser(prog="python -m core.doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="the checks as JSON")
    args = parser.parse_args(argv)
    checks = diagnose()
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(box=None, pad_edge=False, show_header=False)
        for _ in range(3):
            table.add_column(overflow="fold")
        colour = {OK: "green", WARN: "yellow", FAIL: "red"}
        for c in checks:
            table.add_row(f"[{colour[c.status]}]{c.status}[/]", c.name, c.detail + (f"\n  fix: {c.fix}" if c.fix else ""))
        Console().print(table)
    return 1 if any(c.status == FAIL for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
