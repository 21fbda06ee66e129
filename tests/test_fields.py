"""Every canonical field reaches the engine (``core/conformance/fields.py``), on TRL, torchtune and the
contrib ``hf`` backend, before the conformance suite mixes the same classes into its backends.

Each class plans every field's jobs once (``plan_only``, about 0.1 s each) and builds the engine's
own effective configuration from each plan: TRL's and transformers' argument objects in this process,
torchtune's recipes in one process of its managed environment.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from conformance_backends import TorchtuneFields, TrlFields
from core import envs, plugins

CONTRIB = Path(__file__).resolve().parents[1] / "contrib" / "anytune-hf"


def _fields_hf():
    spec = importlib.util.spec_from_file_location("fields_hf", CONTRIB / "tests" / "fields_hf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HfFields = _fields_hf().HfFields


@pytest.fixture(scope="module")
def hf_registered():
    """The contrib ``hf`` backend registered from its source folder (as ``pip install`` would register it),
    and the registry left as it was afterwards."""
    if "hf" in plugins.registry().backends:
        yield plugins.registry()
        return
    sys.path.insert(0, str(CONTRIB))
    try:
        import anytune_hf

        yield plugins.reset(extra=[anytune_hf])
    finally:
        sys.path.remove(str(CONTRIB))
        for name in [m for m in sys.modules if m == "anytune_hf" or m.startswith("anytune_hf.")]:
            del sys.modules[name]
        plugins.reset()


@pytest.fixture(scope="session")
def torchtune_env():
    """torchtune's managed environment (``python -m core.envs create torchtune``), created once if missing."""
    return envs.create(plugins.registry().backend("torchtune"))


class TestTrlFields(TrlFields):
    """TRL: every field, SFT/DPO/ORPO."""

    @pytest.fixture
    def backend(self):
        return "trl"


@pytest.mark.slow
class TestTorchtuneFields(TorchtuneFields):
    """torchtune: every field it reads, its recipes set up in its own environment."""

    @pytest.fixture
    def backend(self, torchtune_env):
        return "torchtune"


class TestHfFields(HfFields):
    """The contrib ``hf`` backend: every field it reads; the preference fields are refused."""

    @pytest.fixture
    def backend(self, hf_registered):
        return "hf"
