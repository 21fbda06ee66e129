"""Engine environments: a virtual environment per backend, built from the versions the backend pins.

Engines pin versions that cannot share one environment (torchtune needs an old
torchao that peft refuses; Unsloth pins an older TRL), so a backend lists the
packages its engine needs in ``environment`` and anytune builds that list into a
venv of its own under ``$ANYTUNE_HOME/envs`` (default ``~/.cache/anytune/envs``),
named ``<backend>-<hash of the pins and Python version>``: changing a pin makes a new
environment, never a half-upgraded one.

An environment is created on first use (``ensure``), unless ``ANYTUNE_CREATE_ENVS=0``;
creation holds an exclusive file lock (``<home>/<env>.lock``), so two jobs of a sweep
that start at once build it once. Creation follows the user's pip configuration
(``pip.conf``, ``PIP_*`` variables), installs torch first, alone and pinned, so the
user's torch source (a CPU wheel on local disk, a CUDA index) is what is used and
nothing later pulls another build, then everything else. ``uv`` is used when it is on
``PATH`` (set ``ANYTUNE_INSTALLER=pip`` to refuse it); it is given pip's settings. A
wheel directory (``ANYTUNE_WHEELS=/dir`` or ``wheels=``) installs from that directory
alone (``--no-index --find-links``), for machines without a package index.

This module imports no other anytune module but ``core.errors`` (the backend module
imports it); the command line, ``python -m core.envs create|list|check|path|remove``,
is ``core/envs/__main__.py``.
"""
from __future__ import annotations

import contextlib
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
from typing import Any, Callable, Iterator

try:
    import fcntl
except ImportError:  # not POSIX: creation is not locked
    fcntl = None  # type: ignore[assignment]

from core.errors import AnytuneError, EngineMissing

__all__ = ["EngineEnv", "EngineMissing", "MARKER", "LOG", "FIRST", "auto_create_enabled", "check", "create",
           "distribution_version", "ensure", "extra_requirements", "has_distribution", "home", "installer",
           "interpreter", "is_current", "list_envs", "locked", "missing_message", "of", "pinned_version",
           "pip_settings", "project", "python_variable", "remove", "remove_paths", "steps", "wheels_dir"]

MARKER = "anytune-env.json"
"""Written last into an environment: its presence means creation finished."""
LOG = "create.log"
"""The installer's output of the last creation, kept in the environment."""
FIRST = ("torch", "torchvision", "torchaudio")
"""Projects installed alone, before the rest, so nothing else chooses their build."""
CREATE_VARIABLE = "ANYTUNE_CREATE_ENVS"
"""Environment variable that turns first-use creation off (``0``, ``false``, ``no``, ``off``)."""
WHEELS_VARIABLE = "ANYTUNE_WHEELS"
"""Environment variable naming a wheel directory to install from, without a package index."""
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_OFF = ("0", "false", "no", "off")

Runner = Callable[..., subprocess.CompletedProcess]
"""Replacement for ``subprocess.run`` (tests): called as ``run(argv, capture_output=True, text=True, env=...)``."""


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
    def lock_path(self) -> Path:
        """``<home>/<backend>-<key>.lock``: the file whose exclusive lock guards creation and removal."""
        return self.path.with_name(self.path.name + ".lock")

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
    """The managed environment of a backend class or instance (its ``environment`` list).

    :param backend: a backend class or instance; an ``EngineEnv`` is returned as is.
    :raises AnytuneError: the backend declares no environment.
    """
    if isinstance(backend, EngineEnv):
        return backend
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
    node = getattr(backend, "config", None)  # the step's own config node (job.backend for a trainer)
    configured = node.get("python") if node is not None and hasattr(node, "get") else None
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


def auto_create_enabled() -> bool:
    """True unless ``$ANYTUNE_CREATE_ENVS`` is ``0``, ``false``, ``no`` or ``off`` (any case): first-use creation."""
    return os.environ.get(CREATE_VARIABLE, "1").strip().lower() not in _OFF


def missing_message(env: EngineEnv) -> str:
    """Why the engine is missing, the one command that fixes it, and whether first-use creation is on.

    :param env: the backend's managed environment (``of(backend)``).
    """
    if auto_create_enabled():
        auto = (f"anytune creates it on first use (set {CREATE_VARIABLE}=0 to turn that off "
                f"and create it yourself)")
    else:
        auto = (f"first-use creation is off ({CREATE_VARIABLE}="
                f"{os.environ.get(CREATE_VARIABLE, '')}); unset it to let anytune create it")
    return (f"backend '{env.backend}' needs its engine ({env.engine}), which this interpreter "
            f"({sys.executable}) lacks and whose environment ({env.path}) does not exist; create it with:\n"
            f"    {env.create_command()}\n"
            f"({auto}; or set backend.python=/path/to/python of an environment that has {env.engine})")


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


def wheels_dir(wheels: str | os.PathLike | None = None) -> Path | None:
    """The wheel directory to install from without an index: ``wheels``, else ``$ANYTUNE_WHEELS``, else None.

    :param wheels: an explicit directory (the ``--wheels`` option, ``ensure(wheels=...)``); wins over the variable.
    :raises AnytuneError: the directory does not exist.
    """
    chosen = wheels if wheels not in (None, "") else os.environ.get(WHEELS_VARIABLE) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser().absolute()
    if not path.is_dir():
        source = "--wheels" if wheels not in (None, "") else WHEELS_VARIABLE
        raise AnytuneError(f"{source}={chosen}: not a directory (it should hold the wheels to install from)")
    return path


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


def steps(env: EngineEnv, tool: str,
          wheels: str | os.PathLike | None = None) -> list[tuple[str, list[str], dict[str, str] | None]]:
    """(label, argv, environment) of each creation step, in order.

    :param tool: ``pip`` or ``uv`` (``installer()``).
    :param wheels: a wheel directory: every install step gets ``--no-index --find-links <dir>``
        (the venv step is unchanged). Taken as given; ``wheels_dir()`` resolves ``$ANYTUNE_WHEELS``.
    """
    py = str(env.python)
    first = [r for r in env.requirements if project(r) in FIRST]
    offline = ["--no-index", "--find-links", str(wheels)] if wheels else []
    if tool == "uv":
        uv_env = _uv_env()
        make = ("create venv (uv)", ["uv", "venv", "--quiet", "--python", sys.executable, str(env.path)], uv_env)
        install = lambda reqs: ["uv", "pip", "install", "--python", py, *offline, *reqs]  # noqa: E731
    else:
        uv_env = None
        make = ("create venv", [sys.executable, "-m", "venv", str(env.path)], None)
        install = lambda reqs: [py, "-m", "pip", "install", "--progress-bar", "off", *offline, *reqs]  # noqa: E731
    out = [make]
    if first:
        out.append((f"install {' '.join(first)}", install(first), uv_env))
    rest = [r for r in env.requirements if r not in first]
    if rest:
        shown = " ".join(rest[:3]) + (f" +{len(rest) - 3}" if len(rest) > 3 else "")
        out.append((f"install {shown}", install(list(env.requirements)), uv_env))
    return out


@contextlib.contextmanager
def locked(env: EngineEnv, console: Any = None) -> Iterator[None]:
    """Hold the exclusive lock on ``env``'s creation (``fcntl.flock`` on ``env.lock_path``) inside the block.

    Blocks while another process holds it (or another thread: a flock belongs to an open file,
    not to a process). The lock file stays behind on purpose: deleting it would race.
    :param console: where to say that it waits for another job (a rich Console; None: silent).
    """
    with flock(env.lock_path, console, f"{env.backend}: waiting for another job{{holder}} "
                                         f"that is creating {env.path} …"):
        yield


@contextlib.contextmanager
def flock(lock: Path, console: Any = None, waiting: str = "") -> Iterator[None]:
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as fh:
        if fcntl is None:  # not POSIX: unlocked
            yield
            return
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if console is not None and waiting:
                fh.seek(0)
                holder = fh.read().strip()
                console.print(waiting.replace("{holder}", f" (pid {holder})" if holder else ""),
                              markup=False, highlight=False, soft_wrap=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class _Progress:
    """Spinner text of one step: its label, the seconds so far, the installer's latest line."""

    def __init__(self, label: str):
        self.label, self.started, self.line = label, time.time(), ""

    def __rich__(self):
        from rich.text import Text

        text = Text(f"{self.label} … {time.time() - self.started:.0f}s", no_wrap=True, overflow="ellipsis")
        if self.line:
            text.append(f"  {self.line}", style="dim")
        return text


def _stream(argv: list[str], step_env: dict[str, str] | None, progress: _Progress) -> subprocess.CompletedProcess:
    """Run ``argv``, its stderr merged into stdout, each line shown as ``progress.line`` as it comes."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, errors="replace", env=step_env, bufsize=1)
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.strip():
                progress.line = line.strip()
    except BaseException:  # Ctrl-C: the installer goes too
        proc.kill()
        proc.wait()
        raise
    return subprocess.CompletedProcess(argv, proc.wait(), "".join(lines), "")


def _console(console: Any):
    if console is not None:
        return console
    from rich.console import Console

    return Console(stderr=True)


def _build(env: EngineEnv, console: Any, tool: str, wheels: Path | None, run: Runner | None) -> None:
    """Build ``env`` from scratch (the caller holds the lock and has printed the header line)."""
    if env.path.exists() or env.path.is_symlink():
        if env.path.is_symlink():
            env.path.unlink()
        else:
            shutil.rmtree(env.path)
    env.path.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    log_lines: list[str] = []
    try:
        for label, argv, step_env in steps(env, tool, wheels):
            progress = _Progress(label)
            with console.status(progress, spinner="dots"):
                if run is None:
                    proc = _stream(argv, step_env, progress)
                else:
                    proc = run(argv, capture_output=True, text=True, env=step_env)
            log_lines += [f"$ {' '.join(argv)}", proc.stdout or "", proc.stderr or ""]
            if proc.returncode != 0:
                tail = "\n".join(((proc.stdout or "") + (proc.stderr or "")).strip().splitlines()[-15:])
                raise AnytuneError(f"creating the {env.backend} environment failed at '{label}' "
                                   f"(exit {proc.returncode}):\n{tail}")
            console.print(f"  [green]✓[/] {_esc(label)} [dim]{time.time() - progress.started:.1f}s[/]")
        marker = {"backend": env.backend, "requirements": list(env.requirements), "engine": env.engine,
                  "python": f"{sys.version_info.major}.{sys.version_info.minor}", "installer": tool,
                  "wheels": str(wheels) if wheels else None,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.time() - started, 1)}
        (env.path / LOG).write_text("\n".join(log_lines))
        (env.path / MARKER).write_text(json.dumps(marker, indent=2))
    except BaseException:
        if env.path.exists():
            shutil.rmtree(env.path, ignore_errors=True)
        raise
    console.print(f"[bold green]ready[/] in {_took(time.time() - started)}: {_esc(env.python)}", highlight=False)


def _took(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    return f"{whole // 60}m {whole % 60:02d}s"


def _esc(value: Any) -> str:
    """``value`` as text that rich prints literally (``pkg[extra]`` is not a style tag)."""
    from rich.markup import escape

    return escape(str(value))


def _source(tool: str, wheels: Path | None) -> str:
    return f"with {tool}" + (f", from the wheels in {wheels} (no index)" if wheels else "")


def create(backend: Any, force: bool = False, console: Any = None, run: Runner | None = None,
           wheels: str | os.PathLike | None = None) -> EngineEnv:
    """Create ``backend``'s environment (a no-op when it already exists, unless ``force``), under its lock.

    Shows each step with a spinner, the installer's latest line and the step's time on
    ``console``, then the total. The installer's output goes to ``<env>/create.log``; on
    failure the environment is removed and the log's tail is in the error.
    :param backend: a backend class or instance, or an ``EngineEnv``.
    :param force: rebuild it even if it exists.
    :param console: a rich Console (None: stderr).
    :param run: replaces ``subprocess.run`` for each step (tests); None streams the installer's output.
    :param wheels: install from this wheel directory alone (``--no-index --find-links``); None: ``$ANYTUNE_WHEELS``.
    :raises AnytuneError: a step failed, or the wheel directory does not exist.
    """
    env = of(backend)
    console = _console(console)
    wheel_path = wheels_dir(wheels)
    with locked(env, console):
        if env.exists() and not force:
            console.print(f"[green]✓[/] {_esc(env.backend)}: environment exists at {_esc(env.path)}")
            return env
        tool = installer()
        console.print(f"[bold]{_esc(env.backend)}[/]: creating {_esc(env.path)} {_esc(_source(tool, wheel_path))} "
                      f"({len(env.requirements)} pinned requirement(s))")
        _build(env, console, tool, wheel_path, run)
    return env


def _pins(env: EngineEnv) -> str:
    engine = [r for r in env.requirements if env.engine and project(r) == project(env.engine)]
    shown = engine or list(env.requirements[:1])
    more = len(env.requirements) - len(shown)
    return " ".join(shown) + (f" +{more}" if more else "")


def ensure(backend_or_env: Any, console: Any = None, wheels: str | os.PathLike | None = None,
           run: Runner | None = None) -> EngineEnv:
    """The backend's environment, created first if it does not exist yet (first use).

    Returns at once when it exists. Otherwise takes the lock; if another job built it
    meanwhile, says so in one line; else prints one notice line and creates it as
    ``create`` does (each step and its time, then the total). Callers check
    ``auto_create_enabled()`` first.
    :param backend_or_env: a backend class or instance, or an ``EngineEnv``.
    :param console: a rich Console (None: stderr).
    :param wheels: install from this wheel directory alone; None: ``$ANYTUNE_WHEELS``.
    :param run: replaces ``subprocess.run`` for each step (tests).
    :raises AnytuneError: creation failed (nothing is left behind), or the wheel directory does not exist.
    """
    env = of(backend_or_env)
    if env.exists():
        return env
    console = _console(console)
    wheel_path = wheels_dir(wheels)
    with locked(env, console):
        if env.exists():
            console.print(f"[green]✓[/] {_esc(env.backend)}: environment {_esc(env.path)} was built by another "
                          f"job meanwhile",
                          highlight=False, soft_wrap=True)
            return env
        tool = installer()
        console.print(f"[bold]{_esc(env.backend)}[/]: first use — creating its environment {_esc(env.path)} "
                      f"(pinned: {_esc(_pins(env))}; {_esc(_source(tool, wheel_path))}); "
                      f"turn this off with {CREATE_VARIABLE}=0", highlight=False, soft_wrap=True)
        _build(env, console, tool, wheel_path, run)
    return env


def check(backend: Any) -> list[str]:
    """Problems with ``backend``'s environment; an empty list means it is ready.

    Checks the marker, the interpreter, and that every exact pin (``name==version``)
    is installed at that version (other requirements: that the project is installed).
    """
    env = of(backend)
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
    rows: list[dict[str, Any]] = []
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
                     **{k: info[k] for k in ("created", "installer", "seconds", "requirements", "wheels")
                        if k in info}})
    return rows


def remove(backend: str, everything: bool = True, current: EngineEnv | None = None) -> list[Path]:
    """Delete ``backend``'s environments: all of them, or only ``current`` (``everything=False``).

    Each is deleted under its lock, so a creation in progress finishes first.
    """
    gone = []
    for row in list_envs(backend):
        path = Path(row["path"])
        if everything or (current is not None and path == current.path):
            _remove_path(path)
            gone.append(path)
    return gone


def remove_paths(paths: list[Path]) -> None:
    """Delete these environment folders, each under its lock."""
    for path in paths:
        _remove_path(path)


def _remove_path(path: Path) -> None:
    with flock(path.with_name(path.name + ".lock")):
        if path.is_symlink():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)


def _size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total

