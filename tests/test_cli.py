"""`python -m core` end to end: plan_only, an ejected plan without anytune, a sweep that survives a failure."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import core

from core import plugins, runner, runproto
from core.conformance import SMALL, compose

CORE = [sys.executable, "-m", "core", "offline=true"]


def test_plan_only_translates_job_and_runs_nothing(tmp_path):
    p = subprocess.run(CORE + ["plan_only=true", f"run_dir={tmp_path}", "peft=dora", "peft.r=4",
                               "train.learning_rate=3e-4", "backend.native.warmup_steps=2"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    spec = json.loads((tmp_path / "plan/trl_args.json").read_text())
    assert spec["peft"]["use_dora"] is True and spec["peft"]["r"] == 4
    assert spec["args"]["learning_rate"] == 3e-4 and spec["args"]["warmup_steps"] == 2
    assert spec["data"]["train"] == "data/train.jsonl"
    assert (tmp_path / "plan/run.sh").exists() and not (tmp_path / "metrics.jsonl").exists()
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "planned"


def test_dpo_translation():
    from plugins.trl import translate

    cfg = compose(SMALL + ["method=dpo", "data=demo_pref", "method.beta=0.3", "method.loss_type=ipo"])
    data = core.DataInfo(dir=Path("data"), kind="preference", stats={"rows": {"train": 16}},
                         train=Path("data/train.jsonl"), eval=None, template=Path("data/chat_template.jinja"))
    spec = translate.native_spec(cfg, data)
    assert spec["method"] == "dpo" and spec["args"]["beta"] == 0.3 and spec["args"]["loss_type"] == ["ipo"]
    assert "packing" not in spec["args"] and spec["data"]["eval"] is None
    steps = cfg.train.max_steps  # the examples in the schedule's order, read one pass in order
    assert spec["order"] == {"steps": steps, "batch": cfg.train.batch_size, "accum": cfg.train.grad_accum,
                             "seed": cfg.train.seed, "shuffle": True}
    assert spec["args"]["max_steps"] == steps and spec["args"]["train_sampling_strategy"] == "sequential"


BLOCK_ANYTUNE = textwrap.dedent("""
    import runpy, sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("core", "plugins", "hydra", "omegaconf", "pluggy"):
                raise ImportError(f"{name} is not available in an ejected plan")
    sys.meta_path.insert(0, Block())
    sys.argv = ["plan/trl_worker.py", "plan/trl_args.json"]
    runpy.run_path("plan/trl_worker.py", run_name="__main__")
""")


@pytest.mark.slow
def test_ejected_plan_runs_without_anytune(tmp_path):
    cfg = compose(SMALL + ["plan_only=true", "train.max_steps=3"])
    assert runner.run(cfg, tmp_path)["status"] == "planned"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    p = subprocess.run([sys.executable, "-c", BLOCK_ANYTUNE], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    outcome = runproto.read_json(str(tmp_path / "outcome.json"))  # run by hand: the worker's own outcome
    assert outcome["final"]["train_loss"] > 0 and outcome["artifacts"] == {"adapter": {"path": "artifacts/adapter"}}
    assert [r["step"] for r in runproto.read_jsonl(str(tmp_path / "metrics.jsonl"))] == [1, 2, 3]
    assert runproto.read_json(str(tmp_path / "result.json"))["status"] == "planned"  # only the core writes it
    assert (tmp_path / "artifacts/adapter/adapter_model.safetensors").exists()


@pytest.mark.slow
def test_sweep_records_failed_job_and_goes_on(tmp_path):
    p = subprocess.run(CORE[:3] + ["-m", "offline=true", "peft=qlora,lora", "train.max_steps=2", "data.max_rows=16",
                               f"hydra.sweep.dir={tmp_path}"], capture_output=True, text=True)
    assert p.returncode == 1  # one job failed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["status"] for r in summary] == ["failed", "succeeded"]
    assert "qlora" in summary[0]["error"] and "cuda" in summary[0]["error"]
    assert (Path(tmp_path) / "1-trl-sft" / "artifacts/adapter").exists()


def test_prompt_that_fills_max_length_is_refused_before_the_engine(tmp_path):
    cfg = compose(SMALL + ["plan_only=true", "method=orpo", "data=demo_pref", "data.max_rows=16",
                           "train.max_length=256"])
    result = runner.run(cfg, tmp_path)
    assert result["status"] == "failed" and "fills train.max_length=256" in result["error"]
    stats = runproto.read_json(str(tmp_path / "data/stats.json"))
    assert stats["prompt_fills_max_length"]["train"] == 2
    assert not (tmp_path / "plan").exists()
    cfg = compose(SMALL + ["plan_only=true", "method=orpo", "data=demo_pref", "data.max_rows=16",
                           "train.max_length=400"])
    assert runner.run(cfg, tmp_path)["status"] == "planned"


@pytest.mark.slow
def test_ctrl_c_keeps_the_weights_trained_so_far(tmp_path):
    """Interrupted mid-run, TRL saves the adapter trained so far, and the metrics so far are summarised."""
    import signal
    import time

    run_dir = tmp_path / "run"
    proc = subprocess.Popen(CORE + ["train.max_steps=400", "data.max_rows=64", "train.batch_size=2",
                                    f"run_dir={run_dir}"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics, deadline = run_dir / "metrics.jsonl", time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # like Ctrl-C: the whole foreground group
    assert proc.wait(timeout=120) == 130
    result = runproto.read_json(str(run_dir / "result.json"))
    assert result["status"] == "interrupted"
    assert 3 <= result["final"]["steps"] < 400 and result["final"]["last_loss"] > 0
    adapter = run_dir / result["artifacts"]["adapter"]["path"]
    assert (adapter / "adapter_model.safetensors").exists()
    outcome = runproto.read_json(str(run_dir / "logs" / "train.outcome.json"))
    assert outcome["interrupted_at_step"] >= 3
    assert result["checkpoint"]["step"] == outcome["interrupted_at_step"], "the step under way finished and was saved"
    log = (run_dir / "logs" / "train.stderr.log").read_text()
    assert "deprecated" not in log, "no deprecation warning about names anytune or its engines pass"


@pytest.mark.slow
def test_a_moved_run_directory_still_loads_with_the_documented_snippet(tmp_path):
    """A relative local model path is recorded absolute, so the adapter loads from a moved run directory, from
    another working directory, with docs/run-directory.md's own lines."""
    import re
    import shutil

    shutil.copytree(Path(runproto.__file__).parent / "assets" / "tiny-llama", tmp_path / "models" / "tiny")
    p = subprocess.run(CORE + ["model.name_or_path=models/tiny", "train.max_steps=2", "data.max_rows=8",
                               f"run_dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    shutil.move(str(tmp_path / "run"), str(tmp_path / "elsewhere"))
    doc = (Path(__file__).resolve().parents[1] / "docs" / "run-directory.md").read_text()
    snippet = re.search(r"```python\n(from peft.*?)```", doc, re.S).group(1)
    lines = [line.split("  #")[0].replace("RUN", str(tmp_path / "elsewhere")) for line in snippet.splitlines()
             if "artifacts/model" not in line and "artifacts/merged" not in line]
    code = "\n".join(lines) + "\nprint(type(model).__name__, len(tokenizer))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("PeftModelForCausalLM")
