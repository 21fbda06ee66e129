"""Config errors name the field and the allowed fields or values, before anything heavy loads."""
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from core import plugins
from core.config import check_overrides, check_values, redacted
from core.conformance import compose
from core.errors import ConfigError


def backends():
    return plugins.registry().backends


def test_typo_names_field_and_close_match():
    with pytest.raises(ConfigError) as err:
        check_overrides(["train.lr=1e-4"], backends())
    msg = str(err.value)
    assert "train.lr" in msg and "did you mean 'train.learning_rate'" in msg
    with pytest.raises(ConfigError, match="did you mean 'train.batch_size'"):
        check_overrides(["train.batchsize=2"], backends())


def test_unknown_section_and_backend_field():
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        check_overrides(["trian.epochs=1"], backends())
    with pytest.raises(ConfigError, match="backend.dataset_num_proc"):
        check_overrides(["backend=trl", "backend.dataset_num_procs=2"], backends())
    check_overrides(["backend=trl", "backend.native.foo=1", "train.max_steps=3"], backends())  # fine


def test_bad_value_lists_allowed_values():
    cfg = compose(["peft.type=lorra"])
    with pytest.raises(ConfigError) as err:
        check_values(cfg)
    assert "peft.type='lorra'" in str(err.value) and "did you mean 'lora'" in str(err.value)
    assert "none, lora, dora, qlora" in str(err.value)


def test_missing_required_field():
    cfg = compose(["model.name_or_path=???"])
    with pytest.raises(ConfigError, match="model.name_or_path is required"):
        check_values(cfg)


def test_redaction_hides_secret_looking_keys():
    cfg = compose(["+backend.native.api_key=sk-123", "+backend.native.hub_token=hf_abc"])
    out = redacted(cfg)
    assert out["backend"]["native"]["api_key"] == "***" and "sk-123" not in str(out)
    assert "hf_abc" not in str(out)


def test_cli_typo_is_short_message_not_traceback():
    p = subprocess.run([sys.executable, "-m", "core", "train.lr=1e-4"], capture_output=True, text=True)
    assert p.returncode == 2
    assert "train.learning_rate" in p.stderr and "Traceback" not in p.stderr


def test_cli_bad_value_is_short_message(tmp_path):
    p = subprocess.run([sys.executable, "-m", "core", "method.name=ppo", f"run_dir={tmp_path}"],
                       capture_output=True, text=True)
    assert p.returncode == 1
    assert "method.name='ppo'" in p.stderr and "sft, dpo, orpo" in p.stderr
    assert "Traceback" not in p.stderr
    assert OmegaConf.load(tmp_path / "config.yaml").method.name == "ppo"
