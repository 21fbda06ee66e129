"""The label view (``python -m core.data show``) shows what the engines train on: its tokens and loss masks are
the ones TRL's worker hands to SFTTrainer and torchtune's components hand to the recipe, for the same run
directory's records (per-turn weights, trained parts, a truncated row)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from core import runner
from core.config import asset, compose
from core.conformance import reference as ref
from core.data import labels

MAX_LENGTH = 400


@pytest.fixture(scope="module")
def weighted(tmp_path_factory) -> Path:
    """Conversations with a weight-0 answer and a partly trained one (one longer than MAX_LENGTH), and a
    plain one."""
    rows = ref.records_of_kind("weighted", 4) + ref.records_of_kind("messages", 2)
    return ref.write_jsonl(tmp_path_factory.mktemp("labels") / "weighted.jsonl", rows)


def planned(backend: str, data: Path, run_dir: Path) -> Path:
    cfg = compose([f"backend={backend}", f"data.train={data}", "plan_only=true", "offline=true",
                   "train.device=cpu", "train.precision=fp32", f"train.max_length={MAX_LENGTH}", "train.shuffle=false",
                   f"model.name_or_path={asset('tiny-llama')}"])
    result = runner.run(cfg, run_dir)
    assert result["status"] == "planned", result.get("error")
    return run_dir


def shown(run_dir: Path) -> list[tuple[list[int], list[int]]]:
    rows = labels.label_rows(run_dir, "train")
    assert all(len(r.sequences) == 1 for r in rows)
    return [(r.sequences[0].ids, r.sequences[0].mask) for r in rows]


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def test_label_view_is_what_the_trl_worker_trains_on(weighted, tmp_path, monkeypatch):
    run_dir = planned("trl", weighted, tmp_path / "trl")
    view = shown(run_dir)
    assert any(sum(m) < len(m) for _, m in view) and any(len(ids) == MAX_LENGTH for ids, _ in view)
    worker = load(run_dir / "plan" / "trl_worker.py", "trl_worker_under_test")
    spec = json.loads((run_dir / "plan" / "trl_args.json").read_text())
    monkeypatch.chdir(run_dir)
    trainer, _ = worker.build_trainer(spec, worker.runproto.MetricsWriter())
    rows = list(trainer.train_dataset)  # after TRL's own processing (labels, truncation), in the job's order
    trained = {(tuple(r["input_ids"]), tuple(int(t != -100) for t in r["labels"])) for r in rows}
    assert all(r["labels"] == [t if t != -100 else -100 for t in r["labels"]] for r in rows)
    assert trained == {(tuple(ids), tuple(mask)) for ids, mask in view}


def test_label_view_is_what_torchtune_trains_on(weighted, tmp_path):
    from omegaconf import OmegaConf

    run_dir = planned("torchtune", weighted, tmp_path / "tt")
    view = shown(run_dir)
    components = load(run_dir / "plan" / "anytune_torchtune.py", "anytune_torchtune_labels")
    conf = OmegaConf.to_container(OmegaConf.load(run_dir / "plan" / "torchtune.yaml"))
    tok_args = {k: v for k, v in conf["tokenizer"].items() if k != "_component_"}
    tok_args["chat_template"] = str(run_dir / tok_args["chat_template"])
    data_args = {k: v for k, v in conf["dataset"].items() if k != "_component_"}
    data_args["source"] = str(run_dir / data_args["source"])
    dataset = components.sft_dataset(components.ChatTemplateTokenizer(**tok_args), **data_args)
    trained = [(ex["tokens"], [int(t != components.IGNORE) for t in ex["labels"]]) for ex in dataset.examples]
    assert trained == view


def test_show_prints_report_and_marks_loss_without_a_terminal(weighted, tmp_path):
    run_dir = planned("trl", weighted, tmp_path / "run")
    out = subprocess.run([sys.executable, "-m", "core.data", "show", str(run_dir), "-n", "6"], capture_output=True,
                         text=True, check=True).stdout
    assert "6 train / 0 eval rows" in out and "4 turn_weights" in out and "2 plain" in out
    assert "1 over max_length=400" in out and "-- truncated here --" in out
    rec = json.loads((run_dir / "data" / "train.jsonl").read_text().splitlines()[0])
    first, second = rec["messages"][1]["content"], rec["messages"][3]["content"]
    cut = second.index(" ")
    # the weight-0 answer carries no loss; the trained part of the second starts after its train: false part
    row1 = out.split("-- row 1:")[1].split("-- row 2:")[0]
    assert first in row1 and f"{labels.PLAIN_OPEN}{first}" not in row1
    assert f"{second[:cut]}{labels.PLAIN_OPEN}{second[cut:]}<|im_end|>\n{labels.PLAIN_CLOSE}" in row1
    plain_row = out.split("-- row 5:")[1]  # a conversation without flags: its answer carries loss
    assert f"{labels.PLAIN_OPEN}{first}<|im_end|>\n{labels.PLAIN_CLOSE}" in plain_row
    assert "\x1b[" not in out  # no colour codes when not a terminal


def test_show_refuses_bad_data_with_file_and_line(tmp_path):
    bad = ref.write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                                 {"role": "assistant", "content": "x", "weight": 0.5}]}])
    proc = subprocess.run([sys.executable, "-m", "core.data", "show", f"data.train={bad}", "offline=true"],
                          capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    assert f"{bad}:1: messages turn 2 weight must be 0 or 1, got 0.5" in proc.stderr
