"""Every installed backend runs the conformance suite (core/conformance.py)."""
import pytest

from core import plugins
from core.conformance import JOBS, BackendConformance


def installed_backends() -> list[str]:
    """Registered backends whose engine their interpreter can import."""
    reg = plugins.registry()
    return sorted(n for n, cls in reg.backends.items()
                  if cls(_default_job(n)).engine_version() is not None)


def _default_job(name):
    from core.conformance import compose

    return compose([f"backend={name}"])


@pytest.fixture(params=installed_backends())
def backend(request):
    return request.param


@pytest.mark.slow
class TestConformance(BackendConformance):
    @pytest.mark.parametrize("job", list(JOBS))
    def test_job(self, backend, job, tmp_path):
        super().test_job(backend, job, tmp_path)
