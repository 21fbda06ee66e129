"""KTO end to end on TRL's KTOTrainer (the tiny model, CPU): unpaired rows reach the trainer with their labels,
and training starts where KTO must (policy = reference: every row's loss is 1 - sigmoid(0) = 0.5)."""
from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from core import runner, runproto
from core.config import asset, compose
from core.conformance import reference as ref

JOB = ["method=kto", "offline=true", "train.device=cpu", "train.precision=fp32", "train.shuffle=false",
       "train.batch_size=4", "train.max_steps=2", "train.save_artifacts=false"]


def test_kto_trains_on_trl_with_the_files_labels(tmp_path, monkeypatch):
    rows = ref.records_of_kind("unpaired", 8)
    data = ref.write_jsonl(tmp_path / "kto.jsonl", rows)
    run_dir = tmp_path / "run"
    result = runner.run(compose([*JOB, f"data.train={data}", f"model.name_or_path={asset('tiny-llama')}"]), run_dir)
    assert result["status"] == "succeeded", result.get("error")
    losses = [r["loss"] for r in runproto.read_jsonl(str(run_dir / "metrics.jsonl")) if "loss" in r]
    assert len(losses) == 2 and losses[0] == pytest.approx(0.5, abs=1e-6)
    spec = json.loads((run_dir / "plan" / "trl_args.json").read_text())
    assert spec["method"] == "kto" and spec["kind"] == "unpaired"
    loader = importlib.util.spec_from_file_location("trl_worker_kto", run_dir / "plan" / "trl_worker.py")
    worker = importlib.util.module_from_spec(loader)
    sys.path.insert(0, str(run_dir / "plan"))
    try:
        loader.loader.exec_module(worker)
    finally:
        sys.path.remove(str(run_dir / "plan"))
    monkeypatch.chdir(run_dir)
    trainer, _ = worker.build_trainer(spec, worker.runproto.MetricsWriter())
    assert type(trainer).__name__ == "KTOTrainer"
    assert sorted(trainer.train_dataset["label"]) == sorted(r["label"] for r in rows)
    assert set(trainer.train_dataset["label"]) == {True, False}
