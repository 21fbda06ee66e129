"""The merged-model exporter: the adapter merged into the base weights, a plain Hugging Face model.

Registered through the ``anytune`` entry-point group like any third-party step.
``step.py`` holds the class and its config node, ``worker.py`` what runs in the
child process (transformers, peft, torch and the standard library).
"""
import core
from plugins.merged.step import MergedExporter


@core.hookimpl
def register_exporters(register):
    """Register the merged-model exporter."""
    register(MergedExporter)
