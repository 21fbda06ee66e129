"""The Unsloth backend: SFT (LoRA, DoRA, QLoRA, full; packing), DPO and ORPO through Unsloth's fast
models and its patched TRL trainers, on one NVIDIA GPU.

Unsloth pins its own transformers and TRL and patches them, peft and torch when imported, so it runs in
an environment anytune creates from the versions pinned in ``UnslothBackend.environment``
(``python -m core.envs create unsloth``), in a process of its own, with ``import unsloth`` first.
Registered through the ``anytune`` entry-point group like any third-party backend. ``backend.py`` holds
the class and its config node, ``translate.py`` the pure translation into the worker's arguments,
``worker.py`` what runs in Unsloth's process (shipped as ``plan/unsloth_worker.py``).
"""
import core
from plugins.unsloth.backend import UnslothBackend


@core.hookimpl
def register_backends(register):
    """Register the Unsloth backend."""
    register(UnslothBackend)
