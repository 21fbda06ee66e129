"""A minimal backend for testing the core without an engine: its 'engine' is a Python script.

``backend.native.mode`` picks what the child does: ok (writes metrics and result.json),
crash (exits 3 after printing to stderr), slow (writes a row, then sleeps until interrupted).
"""
from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import core
from core import workerlib

CHILD = r'''
import json, sys, time, signal
sys.path.insert(0, "plan")
import workerlib
mode = json.load(open("plan/fake.json"))["mode"]
w = workerlib.MetricsWriter("metrics.jsonl")
if mode == "crash":
    print("boom: the engine fell over", file=sys.stderr)
    sys.exit(3)
try:
    for step in range(1, 4):
        w.write(step=step, max_steps=3, loss=2.0 / step, learning_rate=1e-3, tokens=100 * step)
    if mode == "slow":
        while True:
            time.sleep(0.1)
    workerlib.atomic_write_json("result.json", {"status": "succeeded", "final": {"last_loss": 2.0 / 3},
                                                "artifacts": {}})
except KeyboardInterrupt:
    workerlib.atomic_write_json("result.json", {"status": "interrupted"})
    sys.exit(130)
'''


class FakeBackend(core.Backend):
    """Runs a script instead of an engine; supports SFT with LoRA on CPU only."""

    name: ClassVar[str] = "fake"
    description: ClassVar[str] = "test double"
    capabilities: ClassVar[core.Capabilities] = core.Capabilities(supports={
        "method.name": frozenset({"sft"}), "peft.type": frozenset({"lora"}),
        "data.kind": frozenset({"messages"}), "train.device": frozenset({"cpu"}),
        "train.precision": frozenset({"fp32"})})

    def engine_version(self):
        return "0.0"

    def plan(self, run_dir: Path) -> core.Plan:
        plan = run_dir / "plan"
        plan.mkdir(parents=True, exist_ok=True)
        (plan / "fake.json").write_text(json.dumps({"mode": self.job.backend.native.get("mode", "ok")}))
        (plan / "child.py").write_text(CHILD)
        shutil.copy(workerlib.__file__, plan / "workerlib.py")
        return core.Plan(command=[sys.executable, "plan/child.py"], files=["plan/fake.json", "plan/child.py"])


@dataclass
class FakeConfig(core.BackendConfig):
    """Config node of the fake backend."""

    name: str = "fake"
    """Backend name."""


FakeBackend.config_class = FakeConfig


@core.hookimpl
def register_backends(register):
    register(FakeBackend)
