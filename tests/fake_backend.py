"""A minimal backend for testing the core without an engine: its 'engine' is a Python script.

``backend.native.mode`` picks what the child does: ok (writes metrics and an outcome), chatty (ok, then prints
its native keys, secrets resolved, to stdout and stderr),
crash (exits 3 after printing to stderr), crash_mid (logs two steps, then raises), slow (writes rows, then
sleeps until interrupted),
silent (exits 0 and writes no outcome file at all), diverge (step 2's loss is NaN, then it trains on until stopped).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import core

CHILD = r'''
import json, sys, time
sys.path.insert(0, "plan")
import runproto
spec = runproto.resolve_env(json.load(open("plan/fake.json")))  # secrets: from the environment only
mode = spec["mode"]
if mode == "silent":
    sys.exit(0)
w = runproto.MetricsWriter()
if mode == "crash":
    print("boom: the engine fell over", file=sys.stderr)
    sys.exit(3)
outcome = runproto.Outcome()
with outcome as out:
    for step in range(1, 4):
        if mode == "crash_mid" and step == 3:
            raise RuntimeError("the engine died mid-run")
        w.write(step=step, max_steps=3, loss=float("nan") if mode == "diverge" and step == 2 else 2.0 / step,
                learning_rate=1e-3, tokens=100 * step)
    while mode in ("slow", "diverge"):
        time.sleep(0.1)
    out["final"] = {"train_loss": 1.2, "first_loss": 99.0}  # the core computes first_loss from metrics.jsonl
    out["secret_lengths"] = {k: len(v) for k, v in spec["native"].items() if isinstance(v, str)}
    if mode == "chatty":  # an engine that prints what it resolved, secrets included (torchtune prints its config)
        print(json.dumps(spec["native"]), file=sys.stderr)
        print(json.dumps(spec["native"]))
sys.exit(outcome.code)
'''


@dataclass
class FakeConfig(core.BackendConfig):
    """Config node of the fake backend."""

    name: str = "fake"
    """Backend name."""


class FakeBackend(core.Trainer):
    """Runs a script instead of an engine; supports SFT with LoRA on CPU only."""

    name: ClassVar[str] = "fake"
    config_class: ClassVar[type] = FakeConfig
    description: ClassVar[str] = "test double"
    capabilities: ClassVar[core.Capabilities] = core.Capabilities(
        supports={"method.name": frozenset({"sft"}), "peft.type": frozenset({"lora"}),
                  "data.kind": frozenset({"messages"}), "train.device": frozenset({"cpu"}),
                  "train.precision": frozenset({"fp32"})},
        reads=core.fields("model.*", "method.*", "train.*", "peft.*", "data.chat_template"),
        needs=frozenset({"tokenizer", "template", "device", "weights"}))

    def plan(self, ctx: core.Context) -> core.Plan:
        """Write the mode and the script; ship the run protocol."""
        from omegaconf import OmegaConf

        native = OmegaConf.to_container(self.job.backend.native, resolve=True)
        files = [ctx.write_json("fake.json", {"mode": native.get("mode", "ok"), "native": native}),
                 ctx.write("child.py", CHILD), *ctx.ship(core.runproto)]
        return core.Plan(command=[self.python(), "plan/child.py"], files=files)


@core.hookimpl
def register_backends(register):
    """Register the fake backend."""
    register(FakeBackend)
