"""Run directories are never shared: each job claims its own, atomically.

Hydra names a run's directory by the second it started, so two jobs started in the
same second (or one after another) would share it. A job claims a directory by
creating ``.anytune-run`` in it with ``O_EXCL``; when that file is already there, the
job takes the next free ``<name>-2``, ``<name>-3`` ... A directory the user names
(``run_dir=``) that already holds a run is refused unless ``overwrite=true``. A resumed run
(``resume=DIR``) takes its directory back once no live process owns it.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from core import runproto
from core.errors import ConfigError

MARKER = ".anytune-run"
"""Created exclusively by the job that owns a run directory (it holds the owner's pid)."""


def holds_run(path: Path) -> bool:
    """True if ``path`` holds (or held) a run: its marker or a result."""
    return (path / MARKER).exists() or (path / runproto.RESULT).exists()


def check_free(path: Path, overwrite: bool) -> None:
    """:raises ConfigError: ``path`` holds a run and ``overwrite`` is off."""
    if not overwrite and holds_run(path):
        raise ConfigError(f"run_dir={path} already holds a run; choose another directory, leave run_dir unset "
                          "(a new one is made), or set overwrite=true to replace it")


def _take(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path / MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    return True


def claim(path: Path, given: bool = False, overwrite: bool = False) -> Path:
    """The run directory this job owns alone: ``path`` itself, else the first free ``path-N``.

    :param given: the user named ``path`` (``run_dir=``): never renamed; refused if it holds a run.
    :param overwrite: with ``given``, replace a run the directory holds.
    :raises ConfigError: a given directory that holds a run, without ``overwrite``.
    """
    path = Path(path).expanduser().resolve()
    if given:
        if overwrite and holds_run(path):
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        check_free(path, overwrite=False)
        if not _take(path):
            raise ConfigError(f"run_dir={path} was just claimed by another job")
        return path
    candidate, n = path, 1
    while not _take(candidate):
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def owner(path: Path) -> int | None:
    """The pid written into ``path``'s marker by the job that claimed it, or None."""
    try:
        return int((Path(path) / MARKER).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def check_idle(path: Path) -> None:
    """:raises ConfigError: a live process other than this one owns ``path`` (a job is running in it)."""
    pid = owner(path)
    if pid is None or pid == os.getpid():
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass
    raise ConfigError(f"{path} is in use by a running job (pid {pid}); wait for it, or stop it first")


def reclaim(path: Path) -> Path:
    """Take back a run directory to resume the run in it: it must be idle; the marker then names this process."""
    path = Path(path).expanduser().resolve()
    check_idle(path)
    runproto.atomic_write_text(str(path / MARKER), f"{os.getpid()}\n")
    return path
