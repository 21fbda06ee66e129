"""The command line behaves like a Unix tool: its own help, exit codes, stdout for results, errors that
say what to type, and run directories that are never shared."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from core import rundir
from core.errors import ConfigError

CORE = [sys.executable, "-m", "core", "offline=true"]


def core(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CORE, *args], capture_output=True, text=True, cwd=cwd)


def test_help_is_anytunes_own():
    p = subprocess.run([sys.executable, "-m", "core", "--help"], capture_output=True, text=True)
    assert p.returncode == 0
    for text in ("one fine-tuning config, any engine", "backend: ", "export: ", "merged", "eval: ", "heldout",
                 "python -m core.after", "docs/config.md", "model.name_or_path="):
        assert text in p.stdout, text


def test_summary_goes_to_stdout_and_quiet_prints_the_run_directory_alone(tmp_path):
    p = core("plan_only=true", f"run_dir={tmp_path / 'a'}")
    assert p.returncode == 0, p.stderr
    assert "planned" in p.stdout and "Run directory:" in p.stdout and "plan/run.sh" in p.stdout
    # the data report (data/stats.json) and where to see the labels
    assert "data: messages (messages), 300 train / 0 eval rows, 0 skipped" in p.stdout
    assert "tokens p50 " in p.stdout and f"python -m core.data show {tmp_path / 'a'}" in p.stdout
    q = core("plan_only=true", "quiet=true", f"run_dir={tmp_path / 'b'}")
    assert q.returncode == 0 and q.stdout == f"{tmp_path / 'b'}\n"


def test_a_run_directory_holding_a_run_is_refused_unless_overwrite(tmp_path):
    assert core("plan_only=true", f"run_dir={tmp_path}").returncode == 0
    again = core("plan_only=true", f"run_dir={tmp_path}")
    assert again.returncode == 2 and "already holds a run" in again.stderr and "overwrite=true" in again.stderr
    (tmp_path / "keepsake.txt").write_text("old")
    over = core("plan_only=true", "overwrite=true", f"run_dir={tmp_path}")
    assert over.returncode == 0, over.stderr
    assert not (tmp_path / "keepsake.txt").exists()


def test_two_jobs_in_the_same_second_get_their_own_directories(tmp_path):
    """Hydra names run directories by the second: two jobs (here both told the same directory by Hydra)
    each claim their own; no job ever writes into another's."""
    base = tmp_path / "12-00-00-trl-sft"
    got, barrier = [], threading.Barrier(4)

    def claim():
        barrier.wait()
        got.append(rundir.claim(base))

    threads = [threading.Thread(target=claim) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(set(got)) == 4 and base in got
    assert {p.name for p in got} == {base.name, f"{base.name}-2", f"{base.name}-3", f"{base.name}-4"}
    with pytest.raises(ConfigError, match="already holds a run"):
        rundir.claim(base, given=True)


def test_two_commands_with_the_same_hydra_directory_do_not_share_it(tmp_path):
    first = core("plan_only=true", f"hydra.run.dir={tmp_path / 'run'}")
    second = core("plan_only=true", f"hydra.run.dir={tmp_path / 'run'}")
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert (tmp_path / "run" / "result.json").exists() and (tmp_path / "run-2" / "result.json").exists()


def test_no_stub_directories(tmp_path):
    """run_dir= is Hydra's output directory too: nothing under ./runs, and no .hydra/ folder anywhere."""
    p = core("plan_only=true", f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "run" / ".hydra").exists()


@pytest.mark.parametrize("value", ["~/data(1).jsonl", "/tmp/x[1].jsonl"])
def test_a_path_hydra_cannot_read_gets_the_quoted_command(value):
    p = core(f"data.train={value}")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"""'data.train="{value}"'""" in p.stderr


def test_tilde_is_expanded_in_path_fields(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "d").mkdir(parents=True)
    src = Path(__file__).resolve().parents[1] / "core/assets/demo/gsm8k_sft.jsonl"
    (home / "d" / "train.jsonl").write_text(src.read_text())
    p = subprocess.run([*CORE, "plan_only=true", 'data.train="~/d/train.jsonl"', f"run_dir={tmp_path / 'run'}"],
                       capture_output=True, text=True, env={**os.environ, "HOME": str(home)})
    assert p.returncode == 0, p.stderr
    stats = json.loads((tmp_path / "run/data/stats.json").read_text())
    assert stats["sources"]["train"] == str(home / "d" / "train.jsonl")


def test_a_missing_local_model_path_is_named():
    p = core("model.name_or_path=./no/such/model")
    assert p.returncode == 2 and "model.name_or_path=./no/such/model: no such file or directory" in p.stderr
    assert "chat_template" not in p.stderr  # not the misleading advice for a hub model


# -- offline ------------------------------------------------------------------------------------------


def test_offline_switch_sets_the_hub_variables_only_when_on(monkeypatch):
    from core import runner
    from core.conformance import compose

    for var in (*runner.OFFLINE_ENV, "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    on = runner.child_env(compose(["offline=true"]), {})
    off = runner.child_env(compose(["offline=false"]), {})
    assert all(on[k] == v for k, v in runner.OFFLINE_ENV.items())
    assert not any(k in off for k in runner.OFFLINE_ENV)
    assert off["HF_HUB_DISABLE_TELEMETRY"] == "1"  # telemetry is off either way


def test_offline_hub_model_missing_from_the_cache_is_named(tmp_path):
    """A clean environment (none of the test session's offline variables) and an empty hub cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env["HF_HUB_CACHE"] = str(tmp_path / "hub")
    p = subprocess.run([sys.executable, "-m", "core", "offline=true", "model.name_or_path=acme/not-cached",
                        f"run_dir={tmp_path / 'run'}"], capture_output=True, text=True, env=env)
    assert p.returncode == 2, p.stderr
    assert "acme/not-cached is neither a local directory nor in the Hugging Face cache" in p.stderr
    assert str(tmp_path / "hub") in p.stderr and not (tmp_path / "run").exists()


# -- a sweep survives an engine crash and a raising observer ------------------------------------------

SWEEP = r'''
import sys
sys.path.insert(0, {tests!r})
import core, fake_backend
from core import plugins

class EndRaises:
    @core.hookimpl
    def on_run_end(self, run_dir, result):
        raise RuntimeError("tracker is down")

plugins.reset(extra=[fake_backend, EndRaises()])
sys.argv = ["core", "-m", "backend=fake", "train.device=cpu", "train.precision=fp32", "data.max_rows=8",
            "backend.native.mode=crash_mid,ok", "hydra.sweep.dir={sweep}"]
from core.__main__ import main
main()
'''


def test_a_sweep_records_a_crash_mid_run_and_goes_on(tmp_path):
    script = SWEEP.format(tests=str(Path(__file__).parent), sweep=str(tmp_path))
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert p.returncode == 1, p.stderr  # one job failed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["status"] for r in summary] == ["failed", "succeeded"]
    assert "died mid-run" in summary[0]["error"]
    crashed = json.loads((tmp_path / "0-fake-sft" / "result.json").read_text())
    assert crashed["final"]["steps"] == 2  # what it logged before the crash is kept
    assert p.stderr.count("raised in on_run_end") == 1  # reported once, the sweep went on
