"""The torchtune backend: SFT (LoRA, DoRA, QLoRA, full; packing) and LoRA DPO through torchtune 0.6.1's own recipes.

torchtune runs in an environment anytune creates from the versions pinned in
``TorchtuneBackend.environment`` (``python -m core.envs create torchtune``): torchtune
0.6.1 needs a torchao that peft refuses, so it cannot share the TRL environment.
Registered through the ``anytune`` entry-point group like any third-party backend.
"""
from __future__ import annotations

from dataclasses import dataclass

import core
from plugins.torchtune.translate import TorchtuneBackend


@dataclass
class TorchtuneConfig(core.BackendConfig):
    """Config node ``backend=torchtune``. ``native`` keys are merged into the recipe config (``plan/torchtune.yaml``)."""

    name: str = "torchtune"
    """Backend name."""
    compile: bool = False
    """torch.compile the model and loss (the recipe's ``compile``)."""


TorchtuneBackend.config_class = TorchtuneConfig


@core.hookimpl
def register_backends(register):
    """Register the torchtune backend."""
    register(TorchtuneBackend)
