"""The engine contract: a backend is a Trainer with a capability table and a config node.

A backend never runs its engine in the core's process: ``plan()`` writes native
files into ``plan/`` and returns the command that runs them; the core starts it
as a child process and follows ``metrics.jsonl``.
"""
from __future__ import annotations

import json
import os
import shlex
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from core.schema import BackendConfig

#: Config fields every capability table must answer for, with the values the schema allows.
#: ``data.kind`` is the canonical record kind the data normalises to.
FEATURES: dict[str, list[Any]] = {
    "method.name": ["sft", "dpo", "orpo"],
    "peft.type": ["none", "lora", "dora", "qlora"],
    "data.kind": ["messages", "prompt_completion", "preference", "text"],
    "train.device": ["cpu", "cuda"],
    "train.precision": ["fp32", "bf16", "fp16"],
    "train.optimizer": ["adamw", "sgd"],
    "train.lr_scheduler": ["linear", "cosine", "constant", "constant_with_warmup"],
    "method.loss_type": ["sigmoid", "ipo", "hinge"],
    "method.packing": [False, True],
    "method.completion_only_loss": [True, False],
    "train.gradient_checkpointing": [False, True],
    "data.eval": [False, True],
    "train.shuffle": [True, False],
}


@dataclass(frozen=True)
class Capabilities:
    """What a backend supports: the truth used by validation and the docs' matrix.

    ``supports`` maps each field of ``FEATURES`` to the values the backend
    accepts; a field left out supports only its first value (the schema's default).
    ``requires`` maps ``"field=value"`` to a device that value needs, e.g.
    ``{"peft.type=qlora": "cuda"}``.
    """

    supports: Mapping[str, frozenset] = field(default_factory=dict)
    requires: Mapping[str, str] = field(default_factory=dict)

    def allowed(self, feature: str) -> frozenset:
        """Values of ``feature`` this backend accepts."""
        return frozenset(self.supports.get(feature, FEATURES[feature][:1]))

    def can(self, feature: str, value: Any) -> bool:
        """True if the backend accepts ``feature=value``."""
        return value in self.allowed(feature)


@dataclass
class Plan:
    """What a backend wrote into ``plan/`` and how to run it."""

    command: list[str]
    """argv of the child process; it runs with the run directory as working directory."""
    files: list[str] = field(default_factory=list)
    """Native files written, relative to the run directory."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for the child (never secrets: those come from the parent's environment)."""

    def write(self, plan_dir: Path) -> None:
        """Record the command as ``plan/command.json`` and a runnable ``plan/run.sh``."""
        plan_dir.mkdir(parents=True, exist_ok=True)
        (plan_dir / "command.json").write_text(json.dumps(
            {"command": self.command, "env": self.env, "files": self.files}, indent=2))
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        (plan_dir / "run.sh").write_text(
            "#!/bin/sh\n# Runs this plan without anytune; run it from the run directory.\n"
            f"cd \"$(dirname \"$0\")/..\" && {env + ' ' if env else ''}exec {shlex.join(self.command)}\n")
        os.chmod(plan_dir / "run.sh", 0o755)


class Backend(ABC):
    """A training engine. Subclass, set the class attributes, implement ``plan``."""

    name: ClassVar[str]
    """Name users select with ``backend=<name>``."""
    config_class: ClassVar[type[BackendConfig]] = BackendConfig
    """Dataclass of the backend's config node (subclass of BackendConfig)."""
    capabilities: ClassVar[Capabilities]
    """What the backend supports."""
    engine_distribution: ClassVar[str] = ""
    """pip distribution whose version identifies the engine (e.g. "trl")."""
    install_hint: ClassVar[str] = ""
    """The command that installs the engine, shown when it is missing."""
    description: ClassVar[str] = ""
    """One line shown by ``python -m core.backends``."""
    environment: ClassVar[list[str]] = []
    """Pinned pip requirements of the engine's own environment (``python -m core.envs create <name>``);
    empty: the engine is installed beside anytune (an extra)."""

    def __init__(self, job: Any):
        """:param job: the resolved canonical config (``JobConfig`` as a DictConfig)."""
        self.job = job

    def check(self) -> None:
        """Backend-specific validation beyond the capability table; raise ConfigError."""

    @abstractmethod
    def plan(self, run_dir: Path) -> Plan:
        """Write the native files into ``run_dir/plan`` and return how to run them.

        The normalised data is already in ``run_dir/data`` (``train.jsonl``,
        ``eval.jsonl``, ``chat_template.jinja``, ``stats.json``).
        """

    def python(self) -> str:
        """Interpreter that runs the engine: backend.python, else this one if it has the engine,
        else the backend's managed environment (see ``core.envs.interpreter``)."""
        from core import envs

        return envs.interpreter(self, strict=False)

    def engine_version(self) -> str | None:
        """Installed version of the engine for ``python()``, or None when it is missing."""
        from core import envs

        if not self.engine_distribution:
            return None
        return envs.distribution_version(self.python(), self.engine_distribution)
