"""Every hook anytune calls, in the order a job meets them.

Registration hooks hand the host a ``register`` callback, so new optional
arguments never break old plugins. Lifecycle hooks observe; they return nothing
and cannot change the job. Implement them with ``@core.hookimpl``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from core.backend import Backend

hookspec = pluggy.HookspecMarker("anytune")

# -- discovery -----------------------------------------------------------------


@hookspec
def register_backends(register: Callable[[type["Backend"]], None]) -> None:
    """Register training backends.

    Called once when plugins load, before Hydra composes the config.

    :param register: call ``register(BackendClass)`` for each backend; its
        ``config_class`` is stored in Hydra's ConfigStore as ``backend/<name>``.
    """


@hookspec
def register_exporters(register: Callable[[type], None]) -> None:
    """Register exporters (merged model, GGUF, ...) that work on any backend's artefacts.

    :param register: call ``register(ExporterClass)`` for each exporter.
    """


@hookspec
def register_evaluators(register: Callable[[type], None]) -> None:
    """Register evaluators that score a finished run's artefacts.

    :param register: call ``register(EvaluatorClass)`` for each evaluator.
    """


# -- lifecycle -----------------------------------------------------------------


@hookspec
def on_run_start(run_dir: str, config: dict[str, Any]) -> None:
    """A job has validated, prepared its data and planned, and its engine is about to start.

    :param run_dir: the run directory.
    :param config: the resolved config, secrets redacted.
    """


@hookspec
def on_metrics(run_dir: str, metrics: dict[str, Any]) -> None:
    """The engine wrote one row to ``metrics.jsonl`` (see ``core.runproto.METRICS``).

    :param run_dir: the run directory.
    :param metrics: the row: step, loss, learning_rate, ... (absent values are missing keys).
    """


@hookspec
def on_run_end(run_dir: str, result: dict[str, Any]) -> None:
    """A job ended, whatever its status; ``result.json`` is already on disk.

    :param run_dir: the run directory.
    :param result: the content of ``result.json`` (``status`` is succeeded, failed or interrupted).
    """


@hookspec
def on_run_error(run_dir: str, error: BaseException) -> None:
    """A job failed before or while its engine ran; ``on_run_end`` follows.

    :param run_dir: the run directory.
    :param error: the exception raised in the core (an engine crash is an ``EngineFailed``).
    """
