"""Every hook anytune calls, in the order a job meets them.

Registration hooks hand the host a ``register`` callback, so new optional
arguments never break old plugins; they are called once, when plugins load,
before Hydra composes the config. Lifecycle hooks observe: they return nothing,
cannot change the job, and one that raises is reported once by plugin name while
the job goes on. Implement them with ``@core.hookimpl``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from core.step import Evaluator, Exporter, Trainer

hookspec = pluggy.HookspecMarker("anytune")

# -- discovery -----------------------------------------------------------------


@hookspec
def register_backends(register: Callable[[type["Trainer"]], None]) -> None:
    """Register training backends (``core.Trainer`` subclasses).

    :param register: call ``register(TrainerClass)`` for each; its ``config_class`` is stored in
        Hydra's ConfigStore as ``backend/<name>`` (chosen with ``backend=<name>``).
    """


@hookspec
def register_exporters(register: Callable[[type["Exporter"]], None]) -> None:
    """Register exporters (``core.Exporter`` subclasses: merged model, GGUF, ...).

    :param register: call ``register(ExporterClass)`` for each; its ``config_class`` is stored as
        ``export/<name>`` (chosen with ``export=[<name>,...]``, its node at ``export.<name>``).
    """


@hookspec
def register_evaluators(register: Callable[[type["Evaluator"]], None]) -> None:
    """Register evaluators (``core.Evaluator`` subclasses) that score a run's artefacts.

    :param register: call ``register(EvaluatorClass)`` for each; its ``config_class`` is stored as
        ``eval/<name>`` (chosen with ``eval=[<name>,...]``, its node at ``eval.<name>``).
    """


# -- lifecycle -----------------------------------------------------------------


@hookspec
def on_run_start(run_dir: str, config: dict[str, Any]) -> None:
    """A job has validated, prepared its data and planned, and its first step is about to start.

    :param run_dir: the run directory.
    :param config: the resolved config, secrets redacted.
    """


@hookspec
def on_metrics(run_dir: str, metrics: dict[str, Any]) -> None:
    """A step wrote one row to ``metrics.jsonl`` (schema: ``core.runproto.METRICS``).

    :param run_dir: the run directory.
    :param metrics: the row: step, loss, learning_rate, ... (absent values are missing keys).
    """


@hookspec
def on_step_end(run_dir: str, step: str, kind: str, outcome: dict[str, Any]) -> None:
    """One step (trainer, exporter or evaluator) ended; an export is done when ``kind == "exporter"``.

    :param run_dir: the run directory.
    :param step: the step's name (``trl``, ``merged``, ``heldout`` ...).
    :param kind: trainer, exporter or evaluator.
    :param outcome: ``status`` (succeeded, failed, interrupted), ``exit_code``, ``seconds``, and what the
        step's outcome file held (artefacts, scores, final metrics ...).
    """


@hookspec
def on_run_end(run_dir: str, result: dict[str, Any]) -> None:
    """A job ended, whatever its status; ``result.json`` is already on disk.

    :param run_dir: the run directory.
    :param result: the content of ``result.json`` (``status`` is succeeded, failed or interrupted).
    """


@hookspec
def on_run_error(run_dir: str, error: BaseException) -> None:
    """A job failed before or while a step ran; ``on_run_end`` follows.

    :param run_dir: the run directory.
    :param error: the exception raised in the core (a step's crash is a ``StepFailed``).
    """


@hookspec
def on_sweep_start(sweep_dir: str, config: dict[str, Any]) -> None:
    """A multirun is about to launch its jobs (in the sweep's main process; the jobs may run elsewhere).

    :param sweep_dir: the sweep directory; each job's run directory is inside it.
    :param config: the sweep's config before any job's overrides, secrets redacted.
    """


@hookspec
def on_sweep_end(sweep_dir: str, rows: list[dict[str, Any]]) -> None:
    """A multirun ended: every job's ``result.json``, ``summary.json`` and the comparison report are on disk.

    :param sweep_dir: the sweep directory (``report.md``, ``report.html``, ``report.json``, ``summary.json``).
    :param rows: one summary row per job (``summary.json``: job, backend, status, losses ...).
    """
