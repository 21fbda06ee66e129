"""Hydra's Optuna sweeper tunes one engine against held-out loss (conf/hydra/sweeper/tune.yaml): each trial is a
job with its own run directory, and the job returns its held-out loss for Optuna to minimise."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from core import runproto


@pytest.mark.slow
def test_a_three_trial_study_minimises_the_held_out_loss(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    # the three trials side by side (Optuna asks for a batch of n_jobs; joblib runs it): a third of the time
    p = subprocess.run([sys.executable, "-m", "core", "offline=true", "-m", "hydra/sweeper=tune",
                        "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=3", "hydra/launcher=parallel",
                        "hydra.launcher.n_jobs=3", "train.max_steps=2", "data.max_rows=16", "data.eval_fraction=0.25"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    sweep = next((tmp_path / "runs").glob("*/*-sweep"))
    trials = sorted(sweep.glob("*-trl-sft"))
    assert len(trials) == 3
    losses, params = {}, []
    for run in trials:
        result = runproto.read_json(str(run / "result.json"))
        assert result["status"] == "succeeded"
        losses[run.name] = result["final"]["eval_loss"]
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert 1e-5 <= cfg["train"]["learning_rate"] <= 1e-3 and cfg["peft"]["r"] in (8, 16, 32)
        params.append((cfg["train"]["learning_rate"], cfg["peft"]["r"]))
    assert len(set(params)) == 3  # the sampler chose each trial's values
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(losses.values()))  # what the jobs returned: their eval loss
    winner = trials[list(losses.values()).index(min(losses.values()))]
    cfg = yaml.safe_load((winner / "config.yaml").read_text())
    assert best["best_params"] == {"train.learning_rate": cfg["train"]["learning_rate"], "peft.r": cfg["peft"]["r"]}
    assert len(runproto.read_json(str(sweep / "summary.json"))) == 3 and (sweep / "report.html").exists()
