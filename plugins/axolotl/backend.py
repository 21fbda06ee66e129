"""The Axolotl backend class and its config node."""
from __future__ import annotations

import difflib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import yaml

import core
from plugins import hftrainer
from plugins.axolotl import env, translate
from plugins.axolotl.memory import AXOLOTL
from plugins.axolotl.migrate import from_axolotl

HERE = Path(__file__).parent
CPU_ATTENTION = frozenset({"eager", "sdpa"})
"""``attn_implementation`` values that run on a CPU; the others Axolotl takes (flash_attention_2/3/4, xformers, sage,
fp8, a hub kernel) are CUDA kernels."""
CUDA_ATTENTION_FLAGS = ("flash_attention", "xformers_attention", "sage_attention")
"""Axolotl's older switches for those CUDA kernels (it turns them into ``attn_implementation``)."""
KEYS_FILE = "anytune-axolotl-keys.json"
"""Cache, inside the Axolotl environment, of the top-level keys its config model takes."""
KEYS_CODE = """
import json, sys
from axolotl.utils.schemas.config import AxolotlInputConfig as M
keys = set()
for name, f in M.model_fields.items():
    keys.add(name)
    for a in (f.alias, getattr(f, "validation_alias", None)):
        if isinstance(a, str):
            keys.add(a)
        for c in getattr(a, "choices", ()) or ():
            if isinstance(c, str):
                keys.add(c)
json.dump(sorted(keys), open(sys.argv[1], "w"))
"""
"""Run by the environment's interpreter: writes the keys of Axolotl's config model (fields and aliases)."""


@dataclass
class AxolotlConfig(core.BackendConfig):
    """Config node ``backend=axolotl``. ``native`` keys are merged into ``plan/axolotl.yaml`` last; a key Axolotl's
    config model does not know is refused (Axolotl itself would ignore it)."""

    name: str = "axolotl"
    """Backend name."""


class AxolotlBackend(core.Trainer):
    """Axolotl: the job as an Axolotl YAML, run by Axolotl's own ``axolotl.cli.train``."""

    name: ClassVar[str] = "axolotl"
    config_class: ClassVar[type] = AxolotlConfig
    engine_distribution: ClassVar[str] = "axolotl"
    install_hint: ClassVar[str] = "python -m core.envs create axolotl"
    description: ClassVar[str] = "Axolotl (axolotl.cli.train on an Axolotl YAML), in an environment of its own"
    memory: ClassVar[core.MemoryProfile] = AXOLOTL  # fitted on Axolotl's H200 peaks (its LoRA kernels)
    migrate = staticmethod(from_axolotl)
    environment: ClassVar[list[str]] = env.requirements()
    """The engine's environment: Axolotl and the exact versions it pins, per Python version (``env.py``)."""
    capabilities: ClassVar[core.Capabilities] = core.Capabilities(
        supports={
            # auto, or the training precision's dtype (check() refuses the others): Axolotl loads the weights in
            # the dtype of its bf16/fp16 switches
            "model.dtype": frozenset({"auto", "float32", "bfloat16", "float16"}),
            "model.trust_remote_code": frozenset({False, True}),
            "method.name": frozenset({"sft", "dpo", "orpo"}),
            "peft.type": frozenset({"none", "lora", "dora", "qlora"}),
            "data.kind": frozenset({"messages", "prompt_completion", "preference", "text"}),
            "train.device": frozenset({"cpu", "cuda"}),
            "train.precision": frozenset({"fp32", "bf16", "fp16"}),
            "train.optimizer": frozenset(translate.OPTIMIZERS),
            "train.lr_scheduler": frozenset(translate.SCHEDULERS),
            "method.loss_type": frozenset(translate.DPO_LOSSES),
            "method.completion_only_loss": frozenset({True, False}),
            "method.packing": frozenset({False, True}),
            "train.gradient_checkpointing": frozenset({False, True}),
            "data.eval": frozenset({False, True}),
            "train.shuffle": frozenset({True, False}),
            "train.save_artifacts": frozenset({True, False}),
        },
        # train.devices/nodes: torchrun -m axolotl.cli.train, DDP (train.strategy's default, the only one supported)
        reads=core.fields("model.*", "data.chat_template", "method.*", "peft.*", "train.*"),
        needs=frozenset({"tokenizer", "template", "weights", "device"}),
    )

    def check(self) -> None:
        """The load dtype; a native CUDA attention kernel on a CPU job; and every ``backend.native`` key against
        Axolotl's config model (when its environment exists; otherwise the shipped plugin refuses it when Axolotl
        starts, before any data or model loads)."""
        job = self.job
        if job.model.dtype != "auto" and job.model.dtype != hftrainer.DTYPES[job.train.precision]:
            raise core.ConfigError(
                f"model.dtype={job.model.dtype} with train.precision={job.train.precision}: Axolotl loads the weights "
                f"in the dtype of its precision ({hftrainer.DTYPES[job.train.precision]}); set model.dtype=auto")
        native = dict(job.backend.get("native") or {})
        attention = native.get("attn_implementation")
        flags = [k for k in CUDA_ATTENTION_FLAGS if native.get(k)]
        if job.train.device == "cpu" and ((attention and attention not in CPU_ATTENTION) or flags):
            named = f"attn_implementation={attention}" if attention and attention not in CPU_ATTENTION else flags[0]
            raise core.ConfigError(
                f"backend.native.{named}: a CUDA attention kernel, and train.device=cpu (transformers would try to "
                f"fetch it from the Hub and stop); on a CPU Axolotl runs {' or '.join(sorted(CPU_ATTENTION))}: leave "
                f"the key out (anytune's plan uses SDPA) or set train.device=cuda")
        known = self.known_keys()
        if native and known:
            bad = [k for k in sorted(native) if k not in known]
            if bad:
                def near(k):
                    m = difflib.get_close_matches(k, known, n=1, cutoff=0.6)
                    return f"{k!r}" + (f" (did you mean {m[0]!r}?)" if m else "")

                raise core.ConfigError(f"backend.native: Axolotl {self.environment_version()} does not know "
                                       f"{', '.join(near(k) for k in bad)}; it would silently ignore "
                                       f"{'it' if len(bad) == 1 else 'them'}")

    def known_keys(self) -> list[str]:
        """The top-level keys Axolotl's config model takes (fields and aliases), cached in its environment; empty
        when the environment does not exist yet."""
        from core import envs

        python = envs.interpreter(self, strict=False)
        if not Path(python).exists():
            return []
        cache = Path(python).parent.parent / KEYS_FILE
        if not cache.is_file():
            proc = subprocess.run([python, "-c", KEYS_CODE, str(cache)], capture_output=True, text=True,
                                  timeout=600, env={**__import__("os").environ, "AXOLOTL_DO_NOT_TRACK": "1"})
            if proc.returncode != 0:
                return []
        return json.loads(cache.read_text())

    def plan(self, ctx: core.Context) -> core.Plan:
        """Write ``plan/axolotl.yaml``, the data as Axolotl reads it (``plan/axolotl_data/``) and the plugin's
        settings; ship the plugin as ``plan/anytune_axolotl.py`` with the run protocol, loss masks and HF glue."""
        rows = translate.write_data(ctx.job, ctx.data, ctx.run_dir, ctx.plan_dir / translate.DATA_DIR)
        config = translate.native_config(ctx.job, ctx.data, ctx.rel, ctx.resume, rows=rows)
        config_file = ctx.rel(ctx.plan_dir / translate.PLAN_FILE)
        header = (f"# Axolotl {self.environment_version()} config written by anytune.\n"
                  f"# Run it from the run directory (the folder holding plan/ and data/):\n"
                  f"#   PYTHONPATH=. axolotl train {config_file} {launcher(ctx.job)}\n"
                  f"# (PYTHONPATH=. lets Axolotl import the plugin below from plan/; Axolotl skips a plugin it cannot\n"
                  f"# import with an error in its log and trains without it).\n"
                  f"# The plugin plan.anytune_axolotl.AnytunePlugin ({ctx.rel(ctx.plan_dir / translate.PLUGIN)}) writes\n"
                  f"# metrics.jsonl, artifacts/ and the outcome file, and refuses keys Axolotl would ignore.\n")
        files = [ctx.write(translate.PLAN_FILE, header + yaml.safe_dump(config, sort_keys=False, width=120)),
                 ctx.write_json(translate.SETTINGS, translate.settings(ctx.job, ctx.data, rows)),
                 *ctx.ship(HERE / "plugin.py", rename={"plugin.py": translate.PLUGIN}),
                 *hftrainer.ship(ctx)]
        env_vars = {"AXOLOTL_DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": "."}
        if ctx.job.train.device == "cpu":
            env_vars["CUDA_VISIBLE_DEVICES"] = ""
        return core.Plan(command=command(ctx.job, self.python(), files[0]), files=files, env=env_vars)

    def environment_version(self) -> str:
        """The pinned Axolotl version."""
        return next((r.split("==", 1)[1] for r in self.environment if r.startswith("axolotl==")), "")


def command(job, python: str, config_file: str) -> list[str]:
    """argv of the plan: Axolotl's training entry point, ``python -m axolotl.cli.train plan/axolotl.yaml``; for
    several processes under PyTorch's launcher, ``python -m torch.distributed.run <core.torchrun_args> -m
    axolotl.cli.train plan/axolotl.yaml``, which is what Axolotl's own ``axolotl train --launcher torchrun``
    executes (``cli/utils/train.py``, ``_launch_torchrun_training``) with those options after ``--``."""
    train = ["-m", "axolotl.cli.train", config_file]
    if core.world_size(job) == 1:
        return [python, *train]
    return [python, "-m", "torch.distributed.run", *core.torchrun_args(job), *train]


def launcher(job) -> str:
    """The ``axolotl train`` options that run the plan as its command does (the plan's header)."""
    if core.world_size(job) == 1:
        return "--launcher python"
    return "--launcher torchrun -- " + " ".join(core.torchrun_args(job))
