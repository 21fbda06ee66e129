"""Config errors name the field and the allowed fields, values or range, before anything heavy loads."""
import json
import subprocess
import sys
import textwrap

import pytest
from omegaconf import OmegaConf

import fake_backend
from core import plugins, runner
from core.checks import check_applies, check_reads, check_values
from core.config import check_overrides, redacted
from core.conformance import compose
from core.errors import ConfigError, UnreadField


def reg():
    return plugins.registry()


def test_typo_names_field_and_close_match():
    with pytest.raises(ConfigError) as err:
        check_overrides(["train.lr=1e-4"], reg())
    msg = str(err.value)
    assert "train.lr" in msg and "did you mean 'train.learning_rate'" in msg
    with pytest.raises(ConfigError, match="did you mean 'train.batch_size'"):
        check_overrides(["train.batchsize=2"], reg())


def test_unknown_section_and_backend_field():
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        check_overrides(["trian.epochs=1"], reg())
    with pytest.raises(ConfigError, match="backend.dataset_num_proc"):
        check_overrides(["backend=trl", "backend.dataset_num_procs=2"], reg())
    check_overrides(["backend=trl", "backend.native.foo=1", "train.max_steps=3"], reg())  # fine


def test_backend_not_installed_is_named_with_install_lines(monkeypatch):
    monkeypatch.setenv("ANYTUNE_DISABLE_PLUGINS", "axolotl")  # as if its plugin were not installed
    without = plugins.load()
    with pytest.raises(ConfigError) as err:
        check_overrides(["backend=axolotl"], without)
    msg = str(err.value)
    assert "no backend 'axolotl'" in msg and "installed backends: " in msg and "trl" in msg
    assert f"axolotl: {plugins.FIRST_PARTY['axolotl']}" in msg and "trl:" not in msg  # only those not installed
    with pytest.raises(ConfigError, match="no backend 'axolotl'"):  # in a sweep too
        check_overrides(["-m", "backend=trl,axolotl"], without)


def test_cli_backend_not_installed_is_anytunes_message_not_hydras(tmp_path):
    import os

    p = subprocess.run([sys.executable, "-m", "core", "backend=axolotl", f"run_dir={tmp_path}"],
                       capture_output=True, text=True, env={**os.environ, "ANYTUNE_DISABLE_PLUGINS": "axolotl"})
    assert p.returncode == 2
    assert "no backend 'axolotl'" in p.stderr and "search path" not in p.stderr.lower()
    assert "Traceback" not in p.stderr and not (tmp_path / "result.json").exists()


def test_bad_value_lists_allowed_values():
    cfg = compose(["peft.type=lorra"])
    with pytest.raises(ConfigError) as err:
        check_values(cfg)
    assert "peft.type='lorra'" in str(err.value) and "did you mean 'lora'" in str(err.value)
    assert "none, lora, dora, qlora" in str(err.value)


@pytest.mark.parametrize("override, words", [
    ("train.learning_rate=-1", "train.learning_rate=-1.0 is out of range: it must be > 0"),
    ("peft.r=0", "peft.r=0 is out of range: it must be >= 1"),
    ("peft.dropout=1.0", "peft.dropout=1.0 is out of range: it must be >= 0 and < 1"),
    ("train.max_length=0", "train.max_length=0 is out of range: it must be >= 8"),
    ("train.batch_size=0", "train.batch_size=0 is out of range: it must be >= 1"),
    ("train.warmup_ratio=1.5", "train.warmup_ratio=1.5 is out of range"),
    ("method.beta=0", "method.beta=0.0 is out of range: it must be > 0"),
    ("data.max_rows=0", "data.max_rows=0 is out of range: it must be >= 1"),
    ("train.max_steps=0", "train.max_steps > 0 or train.epochs > 0"),
])
def test_ranges_come_from_the_schema(override, words):
    with pytest.raises(ConfigError) as err:
        check_values(compose([override]))
    assert words in str(err.value)


@pytest.mark.parametrize("overrides, words", [
    (["peft=none", "peft.r=8"], "peft.r=8 has no effect with peft.type=none"),
    (["method=dpo", "data=demo_pref", "method.packing=true"], "method.packing=True has no effect with method.name=dpo"),
    (["method.loss_type=ipo"], "method.loss_type='ipo' has no effect with method.name=sft"),
])
def test_a_setting_without_effect_is_refused(overrides, words):
    with pytest.raises(ConfigError) as err:
        check_applies(compose(overrides))
    assert words in str(err.value)
    check_applies(compose(["peft=none"]))  # defaults are fine


def test_a_field_the_engine_does_not_read_is_refused_naming_who_reads_it():
    registry = plugins.reset(extra=[fake_backend])
    try:
        fake = registry.backend("fake")
        check_reads(compose(["backend=fake"]), fake, registry.backends)  # defaults are fine
        narrow = type("Narrow", (fake,), {"name": "narrow", "capabilities": type(fake.capabilities)(
            reads=frozenset({"model.name_or_path", "method.name"}))})
        with pytest.raises(UnreadField) as err:
            check_reads(compose(["backend=fake", "peft.r=8"]), narrow, {**registry.backends, "narrow": narrow})
        assert "does not read peft.r" in str(err.value) and "silently ignored" in str(err.value)
        readers = str(err.value).split("backends that read it: ")[1].split(", ")
        assert "fake" in readers and "trl" in readers and "narrow" not in readers
    finally:
        plugins.reset()


def test_missing_required_field():
    cfg = compose(["model.name_or_path=???"])
    with pytest.raises(ConfigError, match="model.name_or_path is required"):
        check_values(cfg)


def test_redaction_hides_secret_looking_keys():
    cfg = compose(["+backend.native.api_key=sk-123", "+backend.native.hub_token=hf_abc"])
    out = redacted(cfg)
    assert out["backend"]["native"]["api_key"] == "***" and "sk-123" not in str(out)
    assert "hf_abc" not in str(out)
    kept = redacted(compose(["+backend.native.max_new_tokens=64", "+backend.native.eos_token=x",
                             "+backend.native.pre_tokenizer=gpt-2"]))["backend"]["native"]
    assert kept == {"max_new_tokens": 64, "eos_token": "x", "pre_tokenizer": "gpt-2"}, "settings that mention tokens"
    from core.config import SECRET

    assert SECRET.search("backend.native.hub_token") and not SECRET.search("backend.native.eos_token"), \
        "an override's dotted key (multirun.yaml, the command line)"


def test_config_is_saved_once_resolved(tmp_path):
    cfg = compose(["plan_only=true", "data.max_rows=8"])
    assert runner.run(cfg, tmp_path)["status"] == "planned"
    saved = OmegaConf.load(tmp_path / "config.yaml")
    assert saved.train.device in ("cpu", "cuda") and saved.train.precision != "auto"


def test_cli_typo_is_short_message_not_traceback():
    p = subprocess.run([sys.executable, "-m", "core", "train.lr=1e-4"], capture_output=True, text=True)
    assert p.returncode == 2
    assert "train.learning_rate" in p.stderr and "Traceback" not in p.stderr


def test_cli_bad_value_exits_2_and_creates_nothing(tmp_path):
    p = subprocess.run([sys.executable, "-m", "core", "method.name=ppo", f"run_dir={tmp_path / 'run'}"],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert "method.name='ppo'" in p.stderr and "sft, dpo, orpo" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "run").exists()


def test_a_refused_job_inside_a_sweep_is_recorded(tmp_path):
    """In a sweep, each job is checked on its own: a refused one is recorded with what it was."""
    result = runner.run(compose(["method.name=ppo"]), tmp_path)
    assert result["status"] == "failed" and result["error_type"] == "ConfigError"
    assert OmegaConf.load(tmp_path / "config.yaml").method.name == "ppo"


HEAVY = ("torch", "transformers", "datasets", "trl", "peft", "accelerate", "tokenizers")


def test_config_error_path_imports_no_engine(tmp_path):
    """A range error is reported by the parent without importing any engine (it stays well under a second;
    bench/overhead.py times it)."""
    script = textwrap.dedent(f"""
        import atexit, json, sys
        atexit.register(lambda: print("MODULES=" + json.dumps(sorted(m for m in sys.modules
                                                                      if m.split('.')[0] in {HEAVY!r}))))
        sys.argv = ["core", "train.learning_rate=-1", "run_dir={tmp_path}"]
        from core.__main__ import main
        main()
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert "train.learning_rate=-1.0 is out of range" in p.stderr
    loaded = json.loads(p.stdout.split("MODULES=")[1])
    assert loaded == [], loaded
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # nothing created


def test_a_capability_table_cannot_support_values_of_a_field_it_does_not_read():
    import core

    with pytest.raises(ValueError, match="method.packing"):
        core.Capabilities(supports={"method.packing": frozenset({False, True})})
    core.Capabilities(supports={"method.packing": frozenset({False, True})}, reads=core.fields("method.packing"))
    with pytest.raises(ValueError, match="matches no readable field"):
        core.fields("train.lr")
