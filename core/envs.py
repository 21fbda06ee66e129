"""Engine environments: a virtual environment per backend, built from the versions the backend pins.

Engines pin versions that cannot share one environment (torchtune needs an old
torchao that peft refuses; Unsloth pins an older TRL), so a backend lists the
packages its engine needs in ``environment`` and anytune builds that list into a
venv of its own under ``$ANYTUNE_HOME/envs`` (default ``~/.cache/anytune/envs``),
named ``<backend>-<hash of the pins and Python version>``: changing a pin makes a new
environment, never a half-upgraded one.

Creation follows the user's pip configuration (``pip.conf``, ``PIP_*`` variables),
installs torch first, alone and pinned, so the user's torch source (a CPU wheel
on local disk, a CUDA index) is what is used and nothing later pulls another
build, then everything else. ``uv`` is used when it is on ``PATH`` (set
``ANYTUNE_INSTALLER=pip`` to refuse it); it is given pip's settings.

``python -m core.envs create|list|check|remove [backend]``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from core.errors import AnytuneError, EngineMissing

MARKER = "anytune-env.json"
"""Written last into an environment: its presence means creation finished."""
LOG = "create.log"
"""The installer's output of the last creation, kept in the environment."""
FIRST = ("torch", "torchvision", "torchaudio")
"""Projects installed alone, before the rest, so nothing else chooses their build."""
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def home() -> Path:
    """Folder that holds the environments: ``$ANYTUNE_HOME/envs``, else ``$XDG_CACHE_HOME/anytune/envs``."""
    root = os.environ.get("ANYTUNE_HOME")
    if root:
        return Path(root).expanduser() / "envs"
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "anytune" / "envs"


def project(requirement: str) -> str:
    """Normalised project name of a pip requirement string (``"Foo_Bar==1.0"`` -> ``"foo-bar"``)."""
    m = _NAME.match(requirement)
    if not m:
        raise AnytuneError(f"not a pip requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", m.group(1)).lower()


def pinned_version(requirement: str) -> str | None:
    """The version of an exact pin (``name==1.2``), else None."""
    m = re.match(r"^\s*[A-Za-z0-9][A-Za-z0-9._-]*(\[[^\]]*\])?\s*==\s*([^\s;,]+)\s*$", requirement)
    return m.group(2) if m else None


@dataclass(frozen=True)
class EngineEnv:
    """One backend's managed environment (it may not exist yet)."""

    backend: str
    """Backend name."""
    requirements: tuple[str, ...]
    """pip requirement strings, in the backend's order."""
    engine: str = ""
    """Distribution whose presence means the engine is installed."""

    @property
    def key(self) -> str:
        """Short hash of the pins and the Python version (``X.Y``) the environment is built for."""
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        return hashlib.sha256("\n".join((py, *self.requirements)).encode()).hexdigest()[:10]

    @property
    def path(self) -> Path:
        """``<home>/<backend>-<key>``."""
        return home() / f"{self.backend}-{self.key}"

    @property
    def python(self) -> Path:
        """The environment's interpreter."""
        return self.path / "bin" / "python"

    def exists(self) -> bool:
        """True if creation finished (the marker is there) and the interpreter is present."""
        return (self.path / MARKER).is_file() and self.python.exists()

    def create_command(self) -> str:
        """The one command that creates this environment."""
        return f"python -m core.envs create {self.backend}"


def extra_requirements(dist: str, extra: str) -> list[str]:
    """The requirements of ``dist``'s ``[extra]`` as installed metadata lists them (markers dropped)."""
    import importlib.metadata

    try:
        reqs = importlib.metadata.requires(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    marker = re.compile(r"""extra\s*==\s*["']%s["']""" % re.escape(extra))
    return [r.split(";")[0].strip() for r in reqs if ";" in r and marker.search(r.split(";", 1)[1])]


def of(backend: Any) -> EngineEnv:
    """The managed environment of a backend class or instance (its ``environment`` list)."""
    reqs = tuple(getattr(backend, "environment", ()) or ())
    if not reqs:
        raise AnytuneError(f"backend '{backend.name}' declares no environment (no 'environment' packages); "
                           f"install its engine yourself: {getattr(backend, 'install_hint', '') or 'see its docs'}")
    return EngineEnv(backend.name, reqs, getattr(backend, "engine_distribution", "") or project(reqs[-1]))


# -- which interpreter runs an engine -------------------------------------------------------------


def is_current(python: str) -> bool:
    """True if ``python`` is this interpreter *and environment*.

    Paths are compared without resolving links: every venv's ``bin/python`` links to
    the same base interpreter, so resolved paths cannot tell environments apart.
    """
    return os.path.abspath(os.path.expanduser(python)) == os.path.abspath(sys.executable)


def distribution_version(python: str, dist: str) -> str | None:
    """Version of the distribution ``dist`` installed for ``python``, or None when missing."""
    if is_current(python):
        import importlib.metadata

        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def has_distribution(python: str, dist: str) -> bool:
    """True if ``python`` can see the installed distribution ``dist``."""
    return distribution_version(python, dist) is not None


def python_variable(name: str) -> str:
    """Environment variable naming one backend's interpreter, e.g. ``ANYTUNE_PYTHON_TORCHTUNE``.

    Unlike ``backend.python=...`` it applies to that backend alone, so a sweep over several
    backends can give each its own interpreter.
    """
    return "ANYTUNE_PYTHON_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def interpreter(backend: Any, strict: bool = True) -> str:
    """The interpreter that runs ``backend``'s engine (a Backend instance).

    In order: the backend config's ``python``; ``$ANYTUNE_PYTHON_<BACKEND>``; the current
    interpreter if it has the engine; the managed environment's interpreter if that exists.

    :param strict: when none has the engine, raise (True) or return the managed
        environment's interpreter path anyway (False: a plan can still be written).
    :raises EngineMissing: no interpreter has the engine; the message holds the command that creates it.
    """
    job = getattr(backend, "job", None)
    configured = job.backend.get("python") if job is not None else None
    configured = configured or os.environ.get(python_variable(backend.name))
    if configured:
        return str(configured)
    dist = getattr(backend, "engine_distribution", "")
    if dist and has_distribution(sys.executable, dist):
        return sys.executable
    if not getattr(backend, "environment", None):
        return sys.executable
    env = of(backend)
    if env.exists():
        return str(env.python)
    if strict:
        raise EngineMissing(missing_message(env))
    return str(env.python)


def missing_message(env: EngineEnv) -> str:
    """Why the engine is missing and the one command that fixes it."""
    return (f"backend '{env.backend}' needs its engine ({env.engine}), which this interpreter "
            f"({sys.executable}) lacks and whose environment ({env.path}) does not exist; create it with:\n"
            f"    {env.create_command()}\n"
            f"(or set backend.python=/path/to/python of an environment that has {env.engine})")


# -- create, check, list, remove ------------------------------------------------------------------


def installer() -> str:
    """``uv`` when it is on PATH and ``ANYTUNE_INSTALLER`` is not ``pip``; else ``pip``."""
    choice = os.environ.get("ANYTUNE_INSTALLER", "auto")
    if choice not in ("auto", "pip", "uv"):
        raise AnytuneError(f"ANYTUNE_INSTALLER={choice!r}: use pip, uv or auto")
    if choice == "pip":
        return "pip"
    if shutil.which("uv"):
        return "uv"
    if choice == "uv":
        raise AnytuneError("ANYTUNE_INSTALLER=uv but uv is not on PATH")
    return "pip"


def pip_settings() -> dict[str, list[str]]:
    """The user's pip index settings (config files and ``PIP_*`` variables), for handing to uv.

    Keys: ``index-url``, ``extra-index-url``, ``find-links``, ``constraint``; each a list.
    """
    out: dict[str, list[str]] = {}
    try:
        listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                                text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        listed = ""
    for line in listed.splitlines():
        m = re.match(r"^(?:global|install|:env:)\.([a-z-]+)='(.*)'$", line.strip())
        if m and m.group(1) in ("index-url", "extra-index-url", "find-links", "constraint"):
            out.setdefault(m.group(1), []).extend(m.group(2).split())
    for key in ("index-url", "extra-index-url", "find-links", "constraint"):
        value = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if value:
            out[key] = value.split()
    return {k: list(dict.fromkeys(v)) for k, v in out.items()}


def _uv_env() -> dict[str, str]:
    env = dict(os.environ)
    names = {"index-url": "UV_INDEX_URL", "extra-index-url": "UV_EXTRA_INDEX_URL",
             "find-links": "UV_FIND_LINKS", "constraint": "UV_CONSTRAINT"}
    for key, values in pip_settings().items():
        env.setdefault(names[key], " ".join(values))
    env.setdefault("UV_INDEX_STRATEGY", "unsafe-best-match")  # pip's semantics across several indexes
    return env


def steps(env: EngineEnv, tool: str) -> list[tuple[str, list[str], dict[str, str] | None]]:
    """(label, argv, environment) of each creation step, in order."""
    py = str(env.python)
    first = [r for r in env.requirements if project(r) in FIRST]
    if tool == "uv":
        uv_env = _uv_env()
        make = ("create venv (uv)", ["uv", "venv", "--quiet", "--python", sys.executable, str(env.path)], uv_env)
        install = lambda reqs: ["uv", "pip", "install", "--python", py, *reqs]  # noqa: E731
    else:
        uv_env = None
        make = ("create venv", [sys.executable, "-m", "venv", str(env.path)], None)
        install = lambda reqs: [py, "-m", "pip", "install", "--progress-bar", "off", *reqs]  # noqa: E731
    out = [make]
    if first:
        out.append((f"install {' '.join(first)}", install(first), uv_env))
    rest = [r for r in env.requirements if r not in first]
    if rest:
        shown = " ".join(rest[:3]) + (f" +{len(rest) - 3}" if len(rest) > 3 else "")
        out.append((f"install {shown}", install(list(env.requirements)), uv_env))
    return out


def create(backend: Any, force: bool = False, console: Any = None,
           run: Callable[..., subprocess.CompletedProcess] | None = None) -> EngineEnv:
    """Create ``backend``'s environment (a no-op when it already exists, unless ``force``).

    Shows each step with a spinner on ``console`` (a rich Console; None: stderr). The
    installer's output goes to ``<env>/create.log``; on failure the environment is
    removed and the log's tail is in the error.
    :raises AnytuneError: a step failed.
    """
    from rich.console import Console

    env = of(backend) if not isinstance(backend, EngineEnv) else backend
    console = console or Console(stderr=True)
    if env.exists() and not force:
        console.print(f"[green]✓[/] {env.backend}: environment exists at {env.path}")
        return env
    if env.path.exists():
        shutil.rmtree(env.path)
    env.path.parent.mkdir(parents=True, exist_ok=True)
    tool = installer()
    started = time.time()
    log_lines: list[str] = []
    console.print(f"[bold]{env.backend}[/]: creating {env.path} with {tool} "
                  f"({len(env.requirements)} pinned requirement(s))")
    try:
        for label, argv, step_env in steps(env, tool):
            t0 = time.time()
            with console.status(f"{label} …", spinner="dots"):
                proc = (run or subprocess.run)(argv, capture_output=True, text=True, env=step_env)
            log_lines += [f"$ {' '.join(argv)}", proc.stdout or "", proc.stderr or ""]
            if proc.returncode != 0:
                tail = "\n".join(((proc.stdout or "") + (proc.stderr or "")).strip().splitlines()[-15:])
                raise AnytuneError(f"creating the {env.backend} environment failed at '{label}' "
                                   f"(exit {proc.returncode}):\n{tail}")
            console.print(f"  [green]✓[/] {label} [dim]{time.time() - t0:.1f}s[/]")
        marker = {"backend": env.backend, "requirements": list(env.requirements), "engine": env.engine,
                  "python": f"{sys.version_info.major}.{sys.version_info.minor}", "installer": tool,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.time() - started, 1)}
        (env.path / LOG).write_text("\n".join(log_lines))
        (env.path / MARKER).write_text(json.dumps(marker, indent=2))
    except BaseException:
        if env.path.exists():
            shutil.rmtree(env.path, ignore_errors=True)
        raise
    console.print(f"[bold green]ready[/] in {time.time() - started:.0f}s: {env.python}")
    return env


def check(backend: Any) -> list[str]:
    """Problems with ``backend``'s environment; an empty list means it is ready.

    Checks the marker, the interpreter, and that every exact pin (``name==version``)
    is installed at that version (other requirements: that the project is installed).
    """
    env = of(backend) if not isinstance(backend, EngineEnv) else backend
    if not env.path.exists():
        return [f"{env.path} does not exist; create it with: {env.create_command()}"]
    if not (env.path / MARKER).is_file():
        return [f"{env.path} is incomplete (creation did not finish); run: {env.create_command()} --force"]
    if not env.python.exists():
        return [f"{env.python} is missing; run: {env.create_command()} --force"]
    wanted = {project(r): pinned_version(r) for r in env.requirements}
    code = ("import importlib.metadata as m, json, sys\nout = {}\n"
            "for d in json.loads(sys.argv[1]):\n"
            "    try: out[d] = m.version(d)\n"
            "    except m.PackageNotFoundError: out[d] = None\n"
            "print(json.dumps(out))")
    proc = subprocess.run([str(env.python), "-c", code, json.dumps(list(wanted))], capture_output=True,
                          text=True, timeout=120)
    if proc.returncode != 0:
        return [f"{env.python} does not run: {proc.stderr.strip()[-300:]}"]
    found = json.loads(proc.stdout)
    problems = []
    for name, version in wanted.items():
        have = found.get(name)
        if have is None:
            problems.append(f"{name} is not installed")
        elif version and have.split("+")[0] != version.split("+")[0]:
            problems.append(f"{name} is {have}, pinned {version}")
    return problems


def list_envs(backend: str | None = None) -> list[dict[str, Any]]:
    """Every environment under ``home()`` (or only ``backend``'s): name, backend, path, state, size, marker data."""
    rows = []
    if not home().is_dir():
        return rows
    for path in sorted(home().iterdir()):
        if not path.is_dir():
            continue
        marker = path / MARKER
        info = json.loads(marker.read_text()) if marker.is_file() else {}
        name = info.get("backend") or path.name.rsplit("-", 1)[0]
        if backend and name != backend:
            continue
        rows.append({"name": path.name, "backend": name, "path": str(path),
                     "state": "ready" if info else "incomplete", "size_mb": round(_size(path) / 2**20),
                     **{k: info[k] for k in ("created", "installer", "seconds", "requirements") if k in info}})
    return rows


def remove(backend: str, everything: bool = True, current: EngineEnv | None = None) -> list[Path]:
    """Delete ``backend``'s environments: all of them, or only ``current`` (``everything=False``)."""
    gone = []
    for row in list_envs(backend):
        path = Path(row["path"])
        if everything or (current is not None and path == current.path):
            shutil.rmtree(path)
            gone.append(path)
    return gone


def _size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


# -- command line -----------------------------------------------------------------------------------


def _backend_class(name: str):
    from core import plugins

    return plugins.registry().backend(name)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m core.envs create|list|check|remove [backend]``."""
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(prog="python -m core.envs",
                                     description="Engine environments: one venv per backend, from its pins.")
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("create", help="create a backend's environment (no-op if it exists)")
    p.add_argument("backend")
    p.add_argument("--force", action="store_true", help="recreate it even if it exists")
    p = sub.add_parser("check", help="check that a backend's environment has every pinned version")
    p.add_argument("backend")
    p = sub.add_parser("list", help="list environments (all, or one backend's)")
    p.add_argument("backend", nargs="?")
    p = sub.add_parser("remove", help="delete a backend's environments")
    p.add_argument("backend")
    p.add_argument("--stale", action="store_true", help="only those not matching the current pins")
    p = sub.add_parser("path", help="print the interpreter of a backend's environment")
    p.add_argument("backend")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    out = Console()
    try:
        if args.verb == "list":
            rows = list_envs(args.backend)
            if not rows:
                console.print(f"no environments under {home()}")
                return 0
            table = Table("environment", "state", "size", "created", "installer", "pins", title=str(home()))
            for r in rows:
                table.add_row(r["name"], r["state"], f"{r['size_mb']} MB", r.get("created", ""),
                              r.get("installer", ""), " ".join(r.get("requirements", [])))
            out.print(table)
            return 0
        env = of(_backend_class(args.backend))
        if args.verb == "create":
            create(env, force=args.force, console=console)
            return 0
        if args.verb == "path":
            out.print(str(env.python))
            return 0 if env.exists() else 1
        if args.verb == "check":
            problems = check(env)
            for problem in problems:
                console.print("✗", style="red", end=" ")
                console.print(problem, markup=False, highlight=False)
            if not problems:
                console.print(f"[green]✓[/] {env.backend}: {env.python} has every pinned version")
            return 1 if problems else 0
        if args.verb == "remove":
            if args.stale:
                gone = [Path(r["path"]) for r in list_envs(env.backend) if Path(r["path"]) != env.path]
                for path in gone:
                    shutil.rmtree(path)
            else:
                gone = remove(env.backend)
            for path in gone:
                console.print(f"removed {path}")
            if not gone:
                console.print(f"nothing to remove for {env.backend}")
            return 0
    except AnytuneError as exc:
        console.print("anytune: error:", style="bold red", end=" ")
        console.print(str(exc), markup=False, highlight=False)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
