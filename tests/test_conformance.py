"""Every installed backend runs the conformance suite (core/conformance.py).

A backend joins by being registered: one whose engine lives in a managed
environment (``Backend.environment``) gets that environment created once per session.
"""
import pytest

from core import envs, plugins
from core.conformance import BackendConformance, compose


def backends_under_test() -> list[str]:
    """Registered backends whose engine is importable here or comes in a managed environment."""
    reg = plugins.registry()
    return sorted(n for n, cls in reg.backends.items()
                  if cls.environment or cls(compose([f"backend={n}"])).engine_version() is not None)


@pytest.fixture(scope="session", params=backends_under_test())
def backend(request):
    cls = plugins.registry().backend(request.param)
    if cls.environment and cls(compose([f"backend={request.param}"])).engine_version() is None:
        envs.create(cls)
    return request.param


@pytest.mark.slow
class TestConformance(BackendConformance):
    """Inherits every conformance test."""
