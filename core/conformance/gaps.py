"""Known gaps of a backend, declared on the test side: ``notimpl``, ``notyet`` and ``never`` (ibis's markers).

A conformance class lists its backend's gaps in ``gaps``; each names the suite's tests it covers by
selector (``"test_job[orpo]"``: a test's name and, in brackets, its parameters other than the backend,
as pytest's ids join them; a bare name for a test without parameters). The pytest plugin
(``core/conformance/plugin.py``) checks every name against the registry and the suite at collection,
gives each covered test the gap's marker (``pytest -m notimpl`` selects them) and makes it a strict
xfail: the test must fail, with ``raises`` (by default ``UnsupportedFeature``: a capability the table
lacks is refused at validation), so a gap that gets fixed fails until its declaration goes.
Nothing here asks the code under test what to skip.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from core.errors import UnsupportedFeature

KINDS = {
    "notimpl": "anytune could support it for this backend and does not yet",
    "notyet": "the engine cannot do it yet (its own limit, in the pinned version)",
    "never": "the backend will never do it (the reason says why)",
}
"""Kinds of gap, each a registered pytest marker."""


@dataclass(frozen=True)
class Gap:
    """One known gap: the tests it covers on some backends, why, and how those tests fail."""

    kind: str
    """notimpl, notyet or never (:data:`KINDS`)."""
    tests: tuple[str, ...]
    """Selectors of the suite's tests the gap covers (``"test_job[orpo]"``)."""
    reason: str
    backends: tuple[str, ...] | None = None
    """Backends it applies to; None: every backend of the class it is declared on."""
    raises: Any = UnsupportedFeature
    """The exception the covered tests fail with (an exception type or a tuple of them)."""

    def applies(self, backend: str, selector: str) -> bool:
        """True if the gap covers test ``selector`` on ``backend``."""
        return (self.backends is None or backend in self.backends) and selector in self.tests


def _gap(kind: str, tests: Sequence[str], reason: str, backends: str | Iterable[str] | None, raises: Any) -> Gap:
    if not tests:
        raise ValueError(f"{kind}() names no test")
    if isinstance(backends, str):
        backends = (backends,)
    return Gap(kind, tuple(tests), reason, None if backends is None else tuple(backends), raises)


def notimpl(*tests: str, reason: str = "", backends: str | Iterable[str] | None = None,
            raises: Any = UnsupportedFeature) -> Gap:
    """A gap anytune could close for this backend: ``tests`` fail (strict xfail) until it does."""
    return _gap("notimpl", tests, reason, backends, raises)


def notyet(*tests: str, reason: str = "", backends: str | Iterable[str] | None = None,
           raises: Any = UnsupportedFeature) -> Gap:
    """A gap of the engine itself (in its pinned version): ``tests`` fail (strict xfail) until it closes."""
    return _gap("notyet", tests, reason, backends, raises)


def never(*tests: str, reason: str, backends: str | Iterable[str] | None = None,
          raises: Any = UnsupportedFeature) -> Gap:
    """Something the backend will never do, and why: ``tests`` fail (strict xfail)."""
    if not reason:
        raise ValueError("never() needs a reason")
    return _gap("never", tests, reason, backends, raises)


# -- selectors ----------------------------------------------------------------------------------------


def _parametrizations(func: Any, skip: str = "backend") -> list[list[tuple[str, list[tuple[Any, str]]]]]:
    """Each ``pytest.mark.parametrize`` of ``func`` (closest decorator first, as pytest applies them) as
    [(argnames, [(values, id), ...])], the ``skip`` argument left out."""
    out = []
    for mark in getattr(func, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        names = mark.args[0]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        if names == [skip]:
            continue
        ids = mark.kwargs.get("ids")
        rows = []
        for i, value in enumerate(mark.args[1]):
            values, pid = (value.values, value.id) if hasattr(value, "values") and hasattr(value, "marks") else (
                (value,) if len(names) == 1 else tuple(value), None)
            if pid is None:
                pid = ids[i] if isinstance(ids, (list, tuple)) else "-".join(str(v) for v in values)
            rows.append((tuple(values), str(pid)))
        out.append((names, rows))
    return out


def selectors(cls: type) -> set[str]:
    """Every selector a gap of ``cls`` may name: each test's name, with each combination of its
    parameters other than the backend."""
    out = set()
    for name in dir(cls):
        func = getattr(cls, name, None)
        if not name.startswith("test") or not callable(func):
            continue
        params = _parametrizations(func)
        if not params:
            out.add(name)
            continue
        for combo in itertools.product(*(rows for _, rows in params)):
            out.add(f"{name}[{'-'.join(pid for _, pid in combo)}]")
    return out


def selector_of(func: Any, name: str, params: dict[str, Any]) -> str:
    """The selector of one collected test: ``name`` and the ids of its parameter values ``params``."""
    parts = []
    for names, rows in _parametrizations(func):
        values = tuple(params.get(n) for n in names)
        parts.append(next((pid for vals, pid in rows if vals == values), "-".join(str(v) for v in values)))
    return f"{name}[{'-'.join(parts)}]" if parts else name
