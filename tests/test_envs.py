"""Engine environments (core/envs.py): create, list, check, remove, the interpreter choice, the missing-engine error.

The environments here are cheap: a venv plus one tiny wheel built in the test, so
every test runs in seconds and needs no network. The torchtune environment itself is
created and used in tests/test_torchtune.py.
"""
from __future__ import annotations

import base64
import hashlib
import os
import shutil
import sys
import zipfile
from pathlib import Path
from typing import ClassVar

import pytest

from core import envs
from core.errors import AnytuneError, EngineMissing


def build_wheel(dest: Path, name: str = "fakeengine", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel (one module) written by hand: no build backend, no network."""
    files = {f"{name}/__init__.py": f"__version__ = {version!r}\n",
             f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                  "Tag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    files[f"{name}-{version}.dist-info/RECORD"] = "\n".join(record) + "\n"
    wheel = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private ANYTUNE_HOME; pip only (uv, if present, is tested on its own)."""
    monkeypatch.setenv("ANYTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ANYTUNE_INSTALLER", "pip")
    return tmp_path / "home"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return build_wheel(tmp_path_factory.mktemp("wheels"))


def fake_backend(wheel: Path, name: str = "fakeeng"):
    """A backend class whose engine is the tiny wheel."""
    class Fake:
        """Backend stand-in: what core.envs reads from a backend."""

        environment: ClassVar[list[str]] = [f"fakeengine @ {wheel.as_uri()}"]
        engine_distribution = "fakeengine"
        install_hint = f"python -m core.envs create {name}"

    Fake.name = name
    return Fake


class Job:
    """The part of a job config that ``envs.interpreter`` reads."""

    def __init__(self, python=None):
        self.backend = {"python": python}


def test_home_follows_anytune_home(monkeypatch, tmp_path):
    monkeypatch.setenv("ANYTUNE_HOME", str(tmp_path))
    assert envs.home() == tmp_path / "envs"
    monkeypatch.delenv("ANYTUNE_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert envs.home() == tmp_path / "cache" / "anytune" / "envs"


def test_name_is_backend_and_hash_of_pins(home):
    a = envs.EngineEnv("x", ("torch==2.13.0", "eng==1.0"))
    b = envs.EngineEnv("x", ("torch==2.13.0", "eng==1.1"))
    assert a.path.parent == home / "envs" and a.path.name.startswith("x-")
    assert a.path != b.path, "a new pin must make a new environment"
    assert a.create_command() == "python -m core.envs create x"


def test_requirement_parsing():
    assert envs.project("Foo_Bar.baz==1.0") == "foo-bar-baz"
    assert envs.project("torch[cuda] >= 2") == "torch"
    assert envs.pinned_version("torch==2.13.0") == "2.13.0"
    assert envs.pinned_version("torch>=2.13") is None
    assert envs.pinned_version("x @ file:///tmp/x.whl") is None


def test_torch_is_installed_first_and_alone():
    env = envs.EngineEnv("tt", ("torch==2.13.0", "torchtune==0.6.1", "torchao==0.15.0"))
    labels = [label for label, _, _ in envs.steps(env, "pip")]
    argvs = [argv for _, argv, _ in envs.steps(env, "pip")]
    assert labels[1] == "install torch==2.13.0"
    assert argvs[1][-1:] == ["torch==2.13.0"] and "torchtune==0.6.1" not in argvs[1]
    assert "torch==2.13.0" in argvs[2], "the torch pin stays in the second step so nothing replaces it"
    assert argvs[1][:3] == [str(env.python), "-m", "pip"], "the env's own pip reads the user's pip config"


def test_uv_gets_pip_settings(monkeypatch):
    monkeypatch.setenv("PIP_FIND_LINKS", "/wheels")
    monkeypatch.setenv("PIP_CONSTRAINT", "/c.txt")
    monkeypatch.delenv("UV_FIND_LINKS", raising=False)
    monkeypatch.delenv("UV_CONSTRAINT", raising=False)
    env = envs.EngineEnv("tt", ("torch==2.13.0", "eng==1"))
    (_, make, _), (_, first, uv_env), _ = envs.steps(env, "uv")
    assert make[:2] == ["uv", "venv"] and first[:3] == ["uv", "pip", "install"]
    assert uv_env["UV_FIND_LINKS"] == "/wheels" and uv_env["UV_CONSTRAINT"] == "/c.txt"


def test_installer_choice(monkeypatch):
    monkeypatch.setenv("ANYTUNE_INSTALLER", "pip")
    assert envs.installer() == "pip"
    monkeypatch.setenv("ANYTUNE_INSTALLER", "conda")
    with pytest.raises(AnytuneError, match="ANYTUNE_INSTALLER"):
        envs.installer()


def test_create_list_check_remove(home, wheel):
    backend = fake_backend(wheel)
    env = envs.of(backend)
    assert envs.check(backend) and not env.exists()
    envs.create(backend)
    assert env.exists() and (env.path / envs.MARKER).is_file() and (env.path / envs.LOG).is_file()
    assert envs.check(backend) == []
    assert envs.has_distribution(str(env.python), "fakeengine")
    assert not envs.has_distribution(sys.executable, "fakeengine")
    rows = envs.list_envs()
    assert [(r["backend"], r["state"]) for r in rows] == [("fakeeng", "ready")]
    assert rows[0]["requirements"] == list(env.requirements)
    envs.create(backend)  # exists: a no-op
    assert envs.remove("fakeeng") == [env.path]
    assert not env.path.exists() and envs.list_envs() == []


def test_check_reports_a_wrong_version(home, wheel):
    backend = fake_backend(wheel)
    env = envs.create(backend)
    wrong = envs.EngineEnv("fakeeng", env.requirements + ("pip==0.0.1",))
    wrong.path.symlink_to(env.path)  # same environment under the name of other pins
    problems = envs.check(wrong)
    assert len(problems) == 1 and problems[0].startswith("pip is ") and "pinned 0.0.1" in problems[0]


def test_failed_creation_leaves_nothing(home, tmp_path):
    class Broken:
        name = "broken"
        environment = [f"missing @ {(tmp_path / 'missing-1.0-py3-none-any.whl').as_uri()}"]
        engine_distribution = "missing"

    with pytest.raises(AnytuneError, match="creating the broken environment failed"):
        envs.create(Broken)
    assert not envs.of(Broken).path.exists()


def test_interpreter_order(home, wheel):
    backend_cls = fake_backend(wheel)
    backend = backend_cls()
    backend.job = Job(python="/opt/my/python")
    assert envs.interpreter(backend) == "/opt/my/python", "backend.python wins"
    backend.job = Job()
    with pytest.raises(EngineMissing) as err:
        envs.interpreter(backend)
    assert "python -m core.envs create fakeeng" in str(err.value)
    assert envs.interpreter(backend, strict=False) == str(envs.of(backend).python)
    envs.create(backend_cls)
    assert envs.interpreter(backend) == str(envs.of(backend).python)
    backend_cls.engine_distribution = "pytest"  # an engine this interpreter has
    assert envs.interpreter(backend) == sys.executable


def test_cli(home, wheel, capsys):
    from core import plugins

    module = type(sys)("fake_env_plugin")
    import core

    Fake = fake_backend(wheel, "fakecli")
    cls = type("FakeCli", (core.Backend,), {"name": "fakecli", "environment": Fake.environment,
                                            "engine_distribution": "fakeengine", "plan": lambda self, d: None,
                                            "capabilities": core.Capabilities()})
    module.register_backends = core.hookimpl(lambda register: register(cls))
    plugins.reset(extra=[module])
    try:
        assert envs.main(["check", "fakecli"]) == 1
        assert envs.main(["create", "fakecli"]) == 0
        assert envs.main(["check", "fakecli"]) == 0
        assert envs.main(["list"]) == 0
        assert "fakecli-" in capsys.readouterr().out
        assert envs.main(["path", "fakecli"]) == 0
        assert envs.main(["remove", "fakecli"]) == 0
        assert envs.list_envs("fakecli") == []
        assert envs.main(["create", "nosuchbackend"]) == 2
    finally:
        plugins.reset()


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not on PATH")
def test_create_with_uv(home, wheel, monkeypatch):
    monkeypatch.setenv("ANYTUNE_INSTALLER", "uv")
    backend = fake_backend(wheel, "fakeuv")
    env = envs.create(backend)
    assert env.exists() and envs.check(backend) == []
    assert '"installer": "uv"' in (env.path / envs.MARKER).read_text()


def test_is_current_does_not_resolve_links(tmp_path):
    link = tmp_path / "python"
    os.symlink(os.path.realpath(sys.executable), link)
    assert envs.is_current(sys.executable)
    assert not envs.is_current(str(link)), "another venv's python links to the same binary"


def test_per_backend_interpreter_variable(monkeypatch, tmp_path):
    """ANYTUNE_PYTHON_<NAME> picks one backend's interpreter and leaves the others alone."""
    from core import plugins
    from core.conformance import compose

    monkeypatch.setenv("ANYTUNE_PYTHON_TORCHTUNE", str(tmp_path / "tt-python"))
    reg = plugins.registry()
    assert reg.backend("torchtune")(compose(["backend=torchtune"])).python() == str(tmp_path / "tt-python")
    assert reg.backend("trl")(compose(["backend=trl"])).python() != str(tmp_path / "tt-python")
    cfg = compose(["backend=torchtune", "backend.python=/explicit/python"])
    assert reg.backend("torchtune")(cfg).python() == "/explicit/python"  # the config wins
