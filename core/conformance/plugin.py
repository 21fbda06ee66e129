"""anytune's pytest plugin: runs the conformance suite on the backends a test module names.

Registered under pytest's ``pytest11`` entry point as ``anytune``, so it is active wherever anytune is
installed (``-p no:anytune`` turns it off). A backend's repository runs the whole suite with one class::

    class TestMine(BackendConformance, backend="mine"): ...

What it adds:

- parametrisation: every test of a :class:`~core.conformance.suite.BackendConformance` subclass runs once
  per backend the class names (``backend="x"``; none: every registered backend), each test marked with
  the backend's name (``pytest -m trl`` runs TRL's only); a test marked ``anytune_needs("weights")`` runs
  only for backends whose capability table needs local weights (for the others it is deselected);
- ``--anytune-backend NAME`` (repeatable): run the suite on these backends only;
- known gaps: each class's ``gaps`` (``notimpl``/``notyet``/``never``, see ``gaps.py``) become the named
  markers and strict xfails on the tests they name. A backend name that is not registered, or a test a gap
  names that the suite does not have, fails collection;
- fixtures: ``anytune_trained_model`` (the tiny Llama briefly trained, once per session) and
  ``anytune_assets`` (data files of each record kind, a model every engine can quantise).
"""
from __future__ import annotations

import json
import shutil

import pytest

NOT_APPLICABLE = "anytune_not_applicable"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("anytune", "anytune conformance suite")
    group.addoption("--anytune-backend", action="append", default=[], metavar="NAME",
                    help="run the conformance suite on this backend only (repeatable); default: every backend "
                         "the conformance classes name")


def pytest_configure(config: pytest.Config) -> None:
    from core.conformance.gaps import KINDS

    for kind, doc in KINDS.items():
        config.addinivalue_line("markers", f"{kind}(reason): a backend's known gap: {doc}; a strict xfail")
    config.addinivalue_line("markers", "anytune_needs(*what): conformance test for backends whose capability "
                                       "table needs all of these (e.g. weights)")
    config.addinivalue_line("markers", f"{NOT_APPLICABLE}: a conformance test no named backend runs (deselected)")
    if not any(line.split(":")[0].strip() == "slow" for line in config.getini("markers")):
        config.addinivalue_line("markers", "slow: end-to-end runs of real engines (the suite's training tests)")
    try:
        names = sorted(_registry().backends)
    except Exception:  # a broken installation must not break pytest; the suite reports it when it runs
        names = []
    for name in names:
        _mark(config, name)


def _mark(config: pytest.Config, backend: str) -> None:
    """Register the marker every conformance test of ``backend`` carries (``pytest -m <backend>``)."""
    line = f"{backend}: conformance tests of backend {backend}"
    if line not in config.getini("markers"):
        config.addinivalue_line("markers", line)


def _registry():
    from core import plugins

    return plugins.registry()


def _is_suite(cls: type | None) -> bool:
    """True for a subclass of ``BackendConformance`` (told without importing the suite into sessions that
    do not use it)."""
    return isinstance(cls, type) and any(
        c.__name__ == "BackendConformance" and c.__module__ == "core.conformance.suite" for c in cls.__mro__)


def _needs(func) -> set[str]:
    return {w for m in getattr(func, "pytestmark", []) if m.name == "anytune_needs" for w in m.args}


_CHECKED: dict[type, list[str]] = {}


def backends_of(cls: type, config: pytest.Config) -> list[str]:
    """The backends ``cls`` runs on (after ``--anytune-backend``), its names and gaps checked once.

    :raises pytest.UsageError: a backend that is not registered, a gap naming a backend the class does not
        run on, or a test the suite does not have (or that does not run on that backend).
    """
    if cls in _CHECKED:
        return _CHECKED[cls]
    from core.conformance.gaps import selectors

    reg = _registry()
    where = f"{cls.__module__}.{cls.__qualname__}"
    names = list(cls.backends) if cls.backends is not None else sorted(reg.backends)
    registered = ", ".join(sorted(reg.backends)) or "none"
    unknown = [n for n in names if n not in reg.backends]
    if unknown:
        broken = f"; plugins that failed to load: {reg.broken}" if reg.broken else ""
        raise pytest.UsageError(f"{where} names backend(s) {unknown}, which are not registered "
                                f"(registered: {registered}){broken}")
    known = selectors(cls)
    problems = []
    for gap in cls.gaps:
        for b in gap.backends or names:
            if b not in reg.backends:
                problems.append(f"a {gap.kind} gap names backend '{b}', which is not registered ({registered})")
                continue
            if b not in names:
                problems.append(f"a {gap.kind} gap names backend '{b}', which {cls.__qualname__} does not run on "
                                f"({', '.join(names)})")
                continue
            for test in gap.tests:
                func = getattr(cls, test.split("[")[0], None)
                if test not in known:
                    problems.append(f"a {gap.kind} gap of '{b}' names {test!r}, which the suite does not have")
                elif _needs(func) - set(reg.backend(b).capabilities.needs):
                    problems.append(f"a {gap.kind} gap of '{b}' names {test!r}, which does not run on '{b}' "
                                    f"(it needs {sorted(_needs(func))})")
    if problems:
        raise pytest.UsageError(f"{where}: " + "; ".join(problems))
    chosen = config.getoption("anytune_backend") or []
    missing = [n for n in chosen if n not in reg.backends]
    if missing:
        raise pytest.UsageError(f"--anytune-backend {missing}: not registered (registered: {registered})")
    _CHECKED[cls] = [n for n in names if not chosen or n in chosen]
    return _CHECKED[cls]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    cls = metafunc.cls
    if not _is_suite(cls) or "backend" not in metafunc.fixturenames:
        return
    reg, needed = _registry(), _needs(metafunc.function)
    params = []
    for name in backends_of(cls, metafunc.config):
        _mark(metafunc.config, name)  # again: a backend registered after start-up (plugins.reset)
        if needed - set(reg.backend(name).capabilities.needs):
            continue
        params.append(pytest.param(name, id=name, marks=getattr(pytest.mark, name)))
    metafunc.parametrize("backend", params or [pytest.param(None, id="none", marks=getattr(pytest.mark,
                                                                                            NOT_APPLICABLE))])


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Gaps become markers and strict xfails (before ``-m`` selects); tests no named backend runs are deselected."""
    from core.conformance.gaps import selector_of

    kept, dropped = [], []
    for item in items:
        cls = getattr(item, "cls", None)
        if not _is_suite(cls) or not hasattr(item, "callspec") or "backend" not in item.callspec.params:
            kept.append(item)
            continue
        if item.get_closest_marker(NOT_APPLICABLE):
            dropped.append(item)
            continue
        backend, name = item.callspec.params["backend"], item.originalname
        selector = selector_of(getattr(cls, name), name, item.callspec.params)
        for gap in cls.gaps:
            if gap.applies(backend, selector):
                item.add_marker(getattr(pytest.mark, gap.kind)(reason=gap.reason))
                item.add_marker(pytest.mark.xfail(strict=True, raises=gap.raises,
                                                  reason=f"{gap.kind}: {gap.reason}"))
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


# -- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def anytune_trained_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The shipped tiny Llama trained briefly on the demo conversations (``reference.train_tiny``), so that
    its predictions carry information; built once per session."""
    from core.conformance.reference import train_tiny

    import os

    import torch

    # pytest-xdist workers each training on every core oversubscribe the host: on the 16-core GPU machine four
    # workers took > 240 s for what one process does in seconds. Each worker takes its share of the cores for
    # the rest of its session (the tests using this model compute the reference on the CPU too).
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // workers)))
    return str(train_tiny(tmp_path_factory.mktemp("anytune-trained") / "tiny-trained"))


@pytest.fixture(scope="session")
def anytune_assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What validation cases need: ``prompt_completion``, ``text`` and ``unpaired`` data files, and ``nf4_model``, the tiny
    model's tokenizer and weights under a config every engine can quantise to NF4 (128 wide, 4 heads: each
    linear weight a multiple of 64 x 256 values). Validation reads a model's config, never its weights."""
    from core.config import asset
    from core.conformance.reference import records_of_kind, write_jsonl

    root = tmp_path_factory.mktemp("anytune-assets")
    out = {kind: str(write_jsonl(root / f"{kind}.jsonl", records_of_kind(kind, 8)))
           for kind in ("prompt_completion", "text", "unpaired")}
    nf4 = root / "nf4-model"
    shutil.copytree(asset("tiny-llama"), nf4)
    config = json.loads((nf4 / "config.json").read_text())
    config.update(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=4, head_dim=32)
    (nf4 / "config.json").write_text(json.dumps(config, indent=2))
    out["nf4_model"] = str(nf4)
    return out
