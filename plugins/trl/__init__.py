"""The TRL backend: SFT, DPO and ORPO through Hugging Face TRL, with peft for LoRA/DoRA/QLoRA.

Registered through the ``anytune`` entry-point group like any third-party backend.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import core
from plugins.trl.translate import TrlBackend


@dataclass
class TrlConfig(core.BackendConfig):
    """Config node ``backend=trl``. ``native`` keys go straight into the TRL *Config (SFTConfig, DPOConfig, ORPOConfig)."""

    name: str = "trl"
    """Backend name."""
    dataset_num_proc: int = 1
    """Processes TRL uses to tokenise datasets."""


TrlBackend.config_class = TrlConfig


@core.hookimpl
def register_backends(register):
    """Register the TRL backend."""
    register(TrlBackend)
