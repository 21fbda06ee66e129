"""The step contract: a trainer, an exporter or an evaluator is a small class a plugin fills in.

A step never runs its engine in the core's process. ``plan(ctx)`` writes native
files into ``ctx.plan_dir`` and returns the command that runs them; the core starts
that command as a child process with the run directory as working directory,
follows ``metrics.jsonl``, reads the optional outcome file (see ``core.runproto``)
and alone writes ``result.json``. The runner runs ``[trainer, *exporters,
*evaluators]`` through this one path.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Mapping

from core import runproto
from core.capabilities import Capabilities
from core.schema import BackendConfig, StepConfig


@dataclass(frozen=True)
class DataInfo:
    """The prepared data of a run, as every step sees it (paths are absolute)."""

    dir: Path
    """The run's ``data/`` folder."""
    kind: str
    """Canonical record kind: messages, prompt_completion, preference or text."""
    stats: Mapping[str, Any]
    """Content of ``data/stats.json`` (rows, tokens, template source, hashes ...)."""
    train: Path
    """``data/train.jsonl``."""
    eval: Path | None
    """``data/eval.jsonl``, or None when there is no held-out data."""
    template: Path | None
    """``data/chat_template.jinja``, or None when no step needs a template (or the kind has none)."""

    @classmethod
    def load(cls, run_dir: Path) -> "DataInfo":
        """The prepared data of ``run_dir`` (from its ``data/stats.json``)."""
        stats = runproto.read_json(str(run_dir / runproto.STATS))
        ev, tmpl = run_dir / runproto.EVAL, run_dir / runproto.TEMPLATE
        return cls(dir=run_dir / runproto.DATA, kind=stats["kind"], stats=stats, train=run_dir / runproto.TRAIN,
                   eval=ev if ev.is_file() else None, template=tmpl if tmpl.is_file() else None)


@dataclass(frozen=True)
class Context:
    """Everything ``Step.plan`` may use; no step retypes a run-directory path."""

    job: Any
    """The resolved canonical config (``JobConfig`` as a DictConfig)."""
    run_dir: Path
    """The run directory (the step's working directory when it runs)."""
    plan_dir: Path
    """Where this step writes its native files (created)."""
    data: DataInfo
    """The prepared data."""
    config: Any
    """This step's own config node (``job.backend``, ``job.export.<name>`` or ``job.eval.<name>``)."""
    artifacts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """What earlier steps leave: name -> ``{"path": ...}`` (relative to the run dir) or ``{"id", "provider"}``."""
    resume: str | None = None
    """For the trainer of a resumed run (``resume=``): its last complete checkpoint folder, relative to the run
    directory (``artifacts/checkpoints/checkpoint-N``), to continue from; None: train from the start."""

    def rel(self, path: Path | str) -> str:
        """``path`` relative to the run directory, as commands and native files should name it."""
        return os.path.relpath(Path(path).resolve(), self.run_dir.resolve())

    def write(self, name: str, text: str) -> str:
        """Write a native file into the plan directory; returns its path relative to the run directory."""
        path = self.plan_dir / name
        runproto.atomic_write_text(str(path), text)
        return self.rel(path)

    def write_json(self, name: str, obj: Any) -> str:
        """Write a JSON file into the plan directory; returns its path relative to the run directory."""
        return self.write(name, json.dumps(obj, indent=2, default=str))

    def ship(self, *sources: ModuleType | Path | str, rename: Mapping[str, str] | None = None) -> list[str]:
        """Copy modules or files (a stdlib-only module such as ``core.runproto``, a plugin's worker)
        into the plan directory so an ejected plan runs without anytune; returns their relative paths.

        :param rename: source file name -> name in the plan directory.
        """
        out = []
        for src in sources:
            path = Path(src.__file__) if isinstance(src, ModuleType) else Path(src)  # type: ignore[arg-type]
            dest = self.plan_dir / (rename or {}).get(path.name, path.name)
            shutil.copy(path, dest)
            out.append(self.rel(dest))
        return out

    def local(self, artifact: str) -> Path | None:
        """Absolute path of a local artefact left by an earlier step, or None."""
        path = (self.artifacts.get(artifact) or {}).get("path")
        return self.run_dir / path if path else None


@dataclass
class Plan:
    """What a step wrote into its plan directory and how to run it."""

    command: list[str]
    """argv of the child process; it runs with the run directory as working directory."""
    files: list[str] = field(default_factory=list)
    """Native files written, relative to the run directory."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for the child (never secrets: those come from the parent's environment)."""

    def write(self, plan_dir: Path, run_dir: Path) -> None:
        """Record the command as ``command.json`` and a runnable ``run.sh`` in ``plan_dir``."""
        plan_dir.mkdir(parents=True, exist_ok=True)
        runproto.atomic_write_text(str(plan_dir / "command.json"), json.dumps(
            {"command": self.command, "env": self.env, "files": self.files}, indent=2))
        up = os.path.relpath(run_dir.resolve(), plan_dir.resolve())
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        runproto.atomic_write_text(str(plan_dir / "run.sh"),
            "#!/bin/sh\n# Runs this step without anytune (from anywhere).\n"
            f"cd \"$(dirname \"$0\")/{up}\" && {env + ' ' if env else ''}exec {shlex.join(self.command)}\n")
        os.chmod(plan_dir / "run.sh", 0o755)


class Step(ABC):
    """A unit of work the runner plans and runs in a child process. Subclass a kind, not this.

    Set the class attributes and implement ``plan``; override ``check`` for validation
    the capability table cannot express.
    """

    kind: ClassVar[str]
    """trainer, exporter or evaluator (set by the kind's base class)."""
    group: ClassVar[str]
    """Hydra config group the step is chosen from (backend, export, eval)."""
    name: ClassVar[str]
    """Name users select it by: ``backend=<name>``, ``export=[<name>]``, ``eval=[<name>]``."""
    config_class: ClassVar[type[StepConfig]] = StepConfig
    """Dataclass of the step's config node (stored in Hydra's ConfigStore under its group)."""
    capabilities: ClassVar[Capabilities] = Capabilities()
    """What the step supports, which canonical fields it reads, what it needs from the core."""
    engine_distribution: ClassVar[str] = ""
    """pip distribution whose version identifies the engine (e.g. "trl"); empty: none needed."""
    install_hint: ClassVar[str] = ""
    """The command that installs the engine, shown when it is missing."""
    description: ClassVar[str] = ""
    """One line shown in listings and docs."""
    environment: ClassVar[list[str]] = []
    """Pinned pip requirements of the engine's own environment, created on first use
    (``python -m core.envs create <name>``); empty: the engine is installed beside anytune."""

    def __init__(self, job: Any, config: Any = None):
        """:param job: the resolved canonical config; :param config: this step's node (default: from ``job``)."""
        self.job = job
        self.config = config if config is not None else self.node(job)

    @classmethod
    def node(cls, job: Any) -> Any:
        """This step's config node inside ``job``."""
        return job.get(cls.group) if cls.group == "backend" else (job.get(cls.group) or {}).get(cls.name)

    @property
    def label(self) -> str:
        """``kind:name``, as progress and results show the step."""
        return f"{self.kind}:{self.name}"

    def check(self) -> None:
        """Validation beyond the capability table, before any data is read; raise ``ConfigError``."""

    @abstractmethod
    def plan(self, ctx: Context) -> Plan:
        """Write the native files into ``ctx.plan_dir`` and return the command that runs them."""

    def python(self) -> str:
        """Interpreter that runs the step: its config's ``python``, ``$ANYTUNE_PYTHON_<NAME>``, this one if it
        has the engine, else the step's managed environment (see ``core.envs.interpreter``)."""
        from core import envs

        return envs.interpreter(self, strict=False)

    def engine_version(self) -> str | None:
        """Installed version of the engine for ``python()``; ``""`` when the step needs no engine, None when missing.

        A version found is kept (asking a managed environment costs a subprocess); a missing one is asked
        again, since first-use creation may install it meanwhile."""
        from core import envs

        if not self.engine_distribution:
            return ""
        if getattr(self, "_engine_version", None) is None:
            self._engine_version = envs.distribution_version(self.python(), self.engine_distribution)
        return self._engine_version


@dataclass(frozen=True)
class MemoryProfile:
    """How an engine spends GPU memory, for ``python -m core.estimate``: a backend declares one (``Trainer.memory``),
    fitted to measured peaks (``core/assets/measured.json``; docs/tools.md has the model)."""

    activations: float
    """Activations kept per token and layer, in units of 4h + 2q + 2kv + 4i elements (hidden, query, key and
    value, MLP widths) at the compute dtype's size."""
    logits: float = 2.0
    """Bytes per token and vocabulary entry held for the loss, at bf16 (2: the logits; 6: plus fp32 log-probabilities;
    0: a fused loss that never holds them)."""
    adapter_input_copy: bool = False
    """LoRA on an unquantised base keeps its own copy of each adapted layer's input (a cast to the adapter's dtype)."""
    fp32_adapter: bool = True
    """Adapter weights, gradients and AdamW states in fp32 at any precision; False: in the compute dtype."""
    fp32_master: bool = False
    """A full fine-tune keeps fp32 weights, gradients and AdamW states, plus a half-precision copy under autocast;
    False: all in the compute dtype."""
    offload_checkpoints: bool = False
    """Checkpointed layer inputs are moved to CPU memory."""
    source: str = ""
    """What the numbers were fitted on (shown with the estimate)."""


class Trainer(Step):
    """A backend: trains the job. Its config node is ``job.backend``."""

    kind: ClassVar[str] = "trainer"
    group: ClassVar[str] = "backend"
    config_class: ClassVar[type[StepConfig]] = BackendConfig
    loss_normalisation: ClassVar[str] = "token mean per optimiser step"
    """How the logged training loss is normalised (the comparison report flags engines that differ): anytune's
    local engines all log the mean over the loss tokens of the whole optimiser step, accumulation included."""
    memory: ClassVar[MemoryProfile | None] = None
    """How the engine spends GPU memory (``python -m core.estimate``); None: no memory estimate."""
    migrate: ClassVar[Any] = None
    """``migrate(config, source) -> core.migrate.Migration``: the engine's own config (a plain dict read from YAML) as
    an anytune job, for ``python -m core.migrate --from <name>``; None: the backend migrates nothing."""

    def cost(self, plan_dir: Path) -> dict[str, Any] | None:
        """A paid backend's estimated price of the planned job, from what ``plan`` wrote into ``plan_dir``: ``usd``,
        ``billed_tokens``, ``usd_per_1m_tokens``, ``price_source``; None (the default): nothing to pay."""
        return None

    def artifacts(self) -> dict[str, dict[str, Any]]:
        """What the trainer leaves for the steps after it, in anytune's one layout: ``artifacts/adapter``
        (PEFT) or ``artifacts/model`` (Hugging Face); nothing when ``train.save_artifacts`` is off.
        A remote trainer overrides this (its model is a hosted id, known only once it ran)."""
        if not self.job.train.save_artifacts:
            return {}
        kind = "model" if self.job.peft.type == "none" else "adapter"
        return {kind: runproto.local_artifact(f"{runproto.ARTIFACTS}/{kind}")}


class Exporter(Step):
    """Turns a run's artefacts into another format (merged weights, GGUF ...). Node: ``job.export.<name>``."""

    kind: ClassVar[str] = "exporter"
    group: ClassVar[str] = "export"


class Evaluator(Step):
    """Scores a run's artefacts; its outcome's ``scores`` go to ``eval.json``. Node: ``job.eval.<name>``."""

    kind: ClassVar[str] = "evaluator"
    group: ClassVar[str] = "eval"


KINDS: dict[str, type[Step]] = {"trainer": Trainer, "exporter": Exporter, "evaluator": Evaluator}
"""Step kinds by name."""
