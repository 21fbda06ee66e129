"""A content-addressed cache of prepared data, so identical data is prepared once per sweep (and across runs).

An entry is a directory ``<cache>/<key>`` holding what :func:`core.data.prepare` wrote
(``train.jsonl``, ``eval.jsonl``, ``chat_template.jinja``, ``stats.json``). The key is a
sha256 over everything that determines those files (:func:`key`); the caller assembles
the parts. Entries are written once, atomically (a temporary directory renamed into
place; a writer that loses a race discards its copy), and checked against the digests
in their ``stats.json`` before use, so a damaged entry is a miss, never wrong data.

``ANYTUNE_DATA_CACHE=0`` turns the cache off. The default location is :func:`cache_dir`.
Standard library only.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from core.runproto import atomic_write_json, read_json

#: Environment variable that turns the cache off when set to 0 (or false/no/off).
ENV = "ANYTUNE_DATA_CACHE"
#: Files of an entry besides stats.json (absent ones are absent from the run's data/ too).
FILES = ("train.jsonl", "eval.jsonl", "chat_template.jinja")
#: Bumped when the layout of an entry changes.
LAYOUT = 1
#: Source files whose code decides the prepared output; their bytes are part of every key.
_CODE_DIR = Path(__file__).resolve().parent
_CODE = (*sorted(p.name for p in _CODE_DIR.glob("*.py")),)


def cache_dir() -> Path:
    """Default cache folder: ``$ANYTUNE_HOME/cache/data``.

    ``ANYTUNE_HOME`` defaults to ``$XDG_CACHE_HOME/anytune``, else ``~/.cache/anytune``
    (the same home as the engines' environments, :func:`core.envs.home`).
    """
    root = os.environ.get("ANYTUNE_HOME")
    if root:
        home = Path(root).expanduser()
    else:
        home = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "anytune"
    return home / "cache" / "data"


def enabled() -> bool:
    """False when ``ANYTUNE_DATA_CACHE`` is ``0`` (or ``false``, ``no``, ``off``)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def key(parts: dict[str, Any]) -> str:
    """sha256 (hex) of ``parts`` (JSON-able: the inputs that determine the output), with the code's digest."""
    body = json.dumps({"layout": LAYOUT, "code": code_digest(), **parts}, sort_keys=True, ensure_ascii=True,
                      separators=(",", ":"), default=str)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """A data file's identity for a key: its resolved path, size and the sha256 of its bytes.

    Hashing the bytes (about 2 ms per 4 MB) is far cheaper than preparing them, and unlike
    a modification time it cannot miss an edit made within the file system's clock tick.
    """
    p = Path(path).resolve()
    return {"path": str(p), "size": p.stat().st_size, "sha256": file_sha256(p)}


def stat_identity(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """A file's identity by metadata only (resolved path, size, mtime_ns); None for no file."""
    if path is None:
        return None
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over the data layer's source (``core/data/*.py``, ``core/chatrender.py``, ``core/lossmask.py``, which
    checks every conversation's loss spans) and library versions.

    A change to the code that writes the files, or to the ``tokenizers`` or ``jinja2``
    that count and render them, makes every earlier entry a miss.
    """
    h = hashlib.sha256()
    for path in [_CODE_DIR / name for name in _CODE] + [_CODE_DIR.parent / "chatrender.py",
                                                        _CODE_DIR.parent / "lossmask.py"]:
        try:
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        except OSError:
            h.update(path.name.encode() + b"\0missing\0")
    for dist in ("tokenizers", "jinja2"):
        h.update(f"{dist}={_version(dist)}\0".encode())
    return h.hexdigest()


def load(cache: Path, entry_key: str, out_dir: Path) -> dict[str, Any] | None:
    """On a hit, put the entry's files into ``out_dir`` and return its stats; None on a miss.

    Files are hard-linked when ``out_dir`` is on the cache's file system, else copied; each
    lands under a temporary name and is renamed into place. ``stats.json`` is left to the
    caller (it adds the ``cache`` marker). A damaged entry (a file missing or not matching
    its digest) is removed and reported as a miss.
    """
    entry = Path(cache) / entry_key
    try:
        stats = read_json(str(entry / "stats.json"))
    except (OSError, ValueError):  # no entry (or one being removed)
        return None
    if not isinstance(stats, dict):
        return None
    if not _intact(entry, stats):
        shutil.rmtree(entry, ignore_errors=True)
        return None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        src, dst = entry / name, out_dir / name
        if src.is_file():
            _place(src, dst)
        else:
            dst.unlink(missing_ok=True)
    return stats


def store(cache: Path, entry_key: str, out_dir: Path, stats: dict[str, Any]) -> bool:
    """Copy the prepared files of ``out_dir`` and ``stats`` into the entry ``<cache>/<key>``, atomically.

    The copy is built in a temporary directory inside ``cache`` and renamed to ``<key>``;
    if another writer got there first, this copy is discarded. Never raises for a cache
    problem (a full disk, no permission): the data step does not fail because its cache did.
    :returns: True if this call created the entry.
    """
    cache, out_dir = Path(cache), Path(out_dir)
    final = cache / entry_key
    tmp = None
    try:
        if final.is_dir():
            return False
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry_key[:16]}-", suffix=".tmp", dir=cache))
        for name in FILES:
            if (out_dir / name).is_file():
                shutil.copyfile(out_dir / name, tmp / name)
        atomic_write_json(str(tmp / "stats.json"), stats)
        os.rename(tmp, final)  # fails when final exists (another writer won): keep theirs
        return True
    except OSError:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        return False
    finally:
        _sweep(cache)


def _sweep(cache: Path, age: float = 86400.0) -> None:
    """Remove temporary folders that writers which died left behind (older than ``age`` seconds)."""
    try:
        stale = [p for p in cache.glob(".*.tmp") if time.time() - p.stat().st_mtime > age]
    except OSError:
        return
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)


def _intact(entry: Path, stats: dict) -> bool:
    """The entry has every file its stats name, and the record files match their digests."""
    digests = stats.get("sha256")
    if not isinstance(digests, dict):
        return False
    for split in ("train", "eval"):
        path, want = entry / f"{split}.jsonl", digests.get(split)
        if want is None:
            if path.exists():
                return False
        elif not path.is_file() or file_sha256(path) != want:
            return False
    return (entry / "chat_template.jinja").is_file() == bool(stats.get("chat_template"))


def _place(src: Path, dst: Path) -> None:
    """``dst`` becomes ``src``'s content: a hard link when possible, else a copy; renamed into place."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{os.urandom(6).hex()}.tmp")
    try:
        try:
            os.link(src, tmp)
        except OSError:  # another file system, or links not supported
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@lru_cache(maxsize=None)
def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None
