"""The GGUF exporter: the merged model converted by llama.cpp's own converter, quantised through its C API,
then loaded back in llama.cpp and checked against transformers (token ids, logits, chat template).

Registered through the ``anytune`` entry-point group like any third-party step. ``step.py`` holds the class and
its config node, ``llamacpp.py`` the llama.cpp facts it checks against (file types, the converter's source),
``worker.py`` what runs in the exporter's own environment (llama-cpp-python, transformers, peft, torch).
"""
import core
from plugins.gguf.step import GgufExporter


@core.hookimpl
def register_exporters(register):
    """Register the GGUF exporter."""
    register(GgufExporter)
