"""The comparison report (``core.compare``): what it flags as not like for like, and the report a real
cross-engine sweep ends with, checked in a headless browser."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core import compare, runproto

CORE = [sys.executable, "-m", "core", "offline=true"]


def fake_run(root: Path, name: str, *, seed: int = 42, tokens: int = 1000, backend: str = "trl",
             losses=(2.0, 1.5, 1.2), template: str = "{{ x }}") -> Path:
    """A run directory as a finished job leaves it (result, config, metrics, data), with the given values."""
    run = root / name
    (run / "data").mkdir(parents=True)
    (run / "data" / "train.jsonl").write_text('{"text": "a"}\n')
    (run / "data" / "chat_template.jinja").write_text(template)
    cfg = {"backend": {"name": backend}, "method": {"name": "sft", "packing": False},
           "peft": {"type": "lora", "r": 16}, "train": {"batch_size": 4, "grad_accum": 2, "max_length": 512,
                                                        "seed": seed}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = [{"step": i + 1, "loss": loss, "tokens": (i + 1) * tokens // len(losses), "elapsed_s": float(i),
             "tokens_per_s": 100.0 + i} for i, loss in enumerate(losses)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = {"status": "succeeded", "backend": backend, "engine_version": "1.0", "wall_seconds": 10.0,
              "trainable_parameters": 32768, "peak_memory_mb": 500.0, "loss_normalisation": "token mean",
              "final": {"steps": len(losses), "tokens": tokens, "last_loss": losses[-1]}}
    runproto.atomic_write_json(str(run / "result.json"), result)
    return run


def test_like_for_like_jobs_carry_no_flag(tmp_path):
    a, b = fake_run(tmp_path, "a"), fake_run(tmp_path, "b", backend="torchtune", losses=(2.0, 1.4, 1.1))
    report = compare.write([a, b], tmp_path / "out")
    assert report["flags"] == [] and report["verdict"].startswith("Like for like")
    assert report["figures"] == ["loss_vs_step", "loss_vs_time", "loss_vs_tokens", "memory", "throughput"]
    assert all((tmp_path / "out" / "plots" / f"{f}.png").read_bytes()[:4] == b"\x89PNG" for f in report["figures"])
    assert [r["engine"] for r in report["rows"]] == ["trl", "torchtune"]
    assert report["rows"][1]["train_loss"] == 1.1 and report["rows"][0]["tokens_per_s"] == 101.5


def test_what_differs_is_flagged_next_to_the_numbers(tmp_path):
    """Seed, training tokens and the chat template differ: each is named with every job's value, the verdict says
    not like for like, and the tokens column is marked in both outputs."""
    a = fake_run(tmp_path, "a")
    b = fake_run(tmp_path, "b", seed=7, tokens=1200, template="{{ y }}")
    report = compare.write([a, b], tmp_path / "out")
    assert {f["key"] for f in report["flags"]} == {"seed", "tokens", "template"}
    seed = next(f for f in report["flags"] if f["key"] == "seed")
    assert seed["values"] == {"a": 42, "b": 7}
    assert report["verdict"].startswith("Not like for like") and "seed" in report["verdict"]
    md = (tmp_path / "out" / compare.REPORT_MD).read_text()
    assert "seed differs: a 42, b 7" in md and "| 1,200 ≠ |" in md
    page = (tmp_path / "out" / compare.REPORT_HTML).read_text()
    assert 'class="differs">1,000 ≠' in page and "data:image/png;base64," in page


def test_a_failed_job_is_listed_and_left_out_of_the_flags(tmp_path):
    a = fake_run(tmp_path, "a")
    b = fake_run(tmp_path, "b", seed=7)
    result = runproto.read_json(str(b / "result.json"))
    runproto.atomic_write_json(str(b / "result.json"), {**result, "status": "failed", "error": "boom\nmore"})
    report = compare.write([a, b], tmp_path / "out")
    assert report["flags"] == [], "a job that did not train is not compared"
    assert report["verdict"].startswith("Nothing to compare"), "one job trained: no like-for-like claim"
    assert report["rows"][1]["error"] == "boom"
    assert "- b: boom" in (tmp_path / "out" / compare.REPORT_MD).read_text()


def test_cli_refuses_a_directory_without_runs(tmp_path):
    p = subprocess.run([sys.executable, "-m", "core.compare", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 2 and "neither a run directory nor a sweep directory" in p.stderr


@pytest.mark.slow
def test_cross_engine_sweep_ends_with_the_report(tmp_path):
    """``-m backend=trl,torchtune``: the sweep directory holds the report, the two engines are like for like,
    and Chromium renders the page with the table and the plots (a screenshot, checked pixel by pixel)."""
    p = subprocess.run([*CORE, "-m", "backend=trl,torchtune", "train.max_steps=3", "data.max_rows=12",
                        "train.batch_size=2"], capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    sweep = next((tmp_path / "runs").glob("*/*-sweep"))
    report = runproto.read_json(str(sweep / compare.REPORT_JSON))
    assert [r["engine"] for r in report["rows"]] == ["trl", "torchtune"]
    assert report["flags"] == [], report["flags"]
    assert {"loss_vs_step", "loss_vs_tokens", "loss_vs_time", "throughput", "memory"} <= set(report["figures"])
    assert f"report: {sweep / compare.REPORT_HTML}" in p.stdout
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium)")
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,2400", (sweep / compare.REPORT_HTML).as_uri()],
                   capture_output=True, timeout=120)
    from PIL import Image

    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    counts = {rgb: n for n, rgb in colours}
    assert counts.get((0xF3, 0xF3, 0xF3), 0) > 2000, "the table's header row is painted"
    assert counts.get((0xD4, 0xED, 0xDA), 0) > 2000, "the like-for-like verdict is painted"
    assert counts.get((0x1F, 0x77, 0xB4), 0) > 300 and counts.get((0xFF, 0x7F, 0x0E), 0) > 300, \
        "both engines' curves (matplotlib's first two colours) are painted"
