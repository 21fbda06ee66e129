"""The anytune conformance suite for the ``hf`` backend: one subclass and a fixture.

Run it after ``pip install ./contrib/anytune-hf`` (with anytune and its ``[trl]``
extra or transformers/peft/torch installed): ``pytest contrib/anytune-hf/tests``.
Jobs the capability table lacks (packing, DPO, ORPO) are asserted to be refused
and reported as ``notimpl`` xfails; the others train, save, load back and match
plain transformers' step-1 loss (``test_parity_step1``, inherited).
"""
import os

import pytest

from core.conformance import BackendConformance

os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
                  TOKENIZERS_PARALLELISM="false")


@pytest.fixture
def backend():
    """The backend under test."""
    return "hf"


@pytest.mark.slow
class TestHf(BackendConformance):
    """Every conformance job on ``backend=hf``: all tests inherited."""
