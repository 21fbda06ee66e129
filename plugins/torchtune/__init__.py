"""The torchtune backend: SFT (LoRA, DoRA, QLoRA, full; packing) and LoRA DPO through torchtune 0.6.1's own recipes.

torchtune runs in an environment anytune creates from the versions pinned in
``TorchtuneBackend.environment`` (``python -m core.envs create torchtune``): torchtune
0.6.1 needs a torchao that peft refuses, so it cannot share the TRL environment.
Registered through the ``anytune`` entry-point group like any third-party backend.
``backend.py`` holds the class and its config node, ``translate.py`` the pure
translation into a recipe config, ``components.py`` what the recipe imports
(shipped as ``plan/anytune_torchtune.py``).
"""
import core
from plugins.torchtune.backend import TorchtuneBackend


@core.hookimpl
def register_backends(register):
    """Register the torchtune backend."""
    register(TorchtuneBackend)
