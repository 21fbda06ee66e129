"""The TRL backend: SFT, DPO and ORPO through Hugging Face TRL, with peft for LoRA/DoRA/QLoRA.

Registered through the ``anytune`` entry-point group like any third-party backend.
``backend.py`` holds the class and its config node, ``translate.py`` the pure
translation into TRL's arguments, ``worker.py`` what runs in TRL's process.
"""
import core
from plugins.trl.backend import TrlBackend


@core.hookimpl
def register_backends(register):
    """Register the TRL backend."""
    register(TrlBackend)
