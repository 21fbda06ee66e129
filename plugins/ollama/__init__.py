"""The Ollama exporter: a Modelfile beside the GGUF, with the chat template of record written as an Ollama (Go)
TEMPLATE and its stop tokens, checked equal to the Jinja template on sample conversations before it is written.

Registered through the ``anytune`` entry-point group like any third-party step. ``step.py`` holds the class and
its config node, ``gotemplate.py`` the translation and the Go-template renderer that checks it, ``worker.py``
what runs in the child process (the standard library only).
"""
import core
from plugins.ollama.step import OllamaExporter


@core.hookimpl
def register_exporters(register):
    """Register the Ollama exporter."""
    register(OllamaExporter)
