"""Engine environments (core/envs): create, ensure (first use, the lock), wheel directories, list, check,
remove, the interpreter choice, the missing-engine error, the command line (core/envs/__main__.py).

The environments here are cheap: a venv plus one tiny wheel built in the test, so
every test runs in seconds and needs no network. The torchtune environment itself is
created and used in tests/test_torchtune.py.
"""
from __future__ import annotations

import ast
import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import ClassVar

import pytest
from rich.console import Console

from core import envs
from core.envs.__main__ import main as cli
from core.errors import AnytuneError, EngineMissing

ROOT = Path(__file__).resolve().parents[1]


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


def node(python=None):
    """The part of a step's config node that ``envs.interpreter`` reads."""
    return {"python": python}


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
    backend.config = node(python="/opt/my/python")
    assert envs.interpreter(backend) == "/opt/my/python", "backend.python wins"
    backend.config = node()
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
    cls = type("FakeCli", (core.Trainer,), {"name": "fakecli", "environment": Fake.environment,
                                            "engine_distribution": "fakeengine", "plan": lambda self, d: None,
                                            "capabilities": core.Capabilities()})
    module.register_backends = core.hookimpl(lambda register: register(cls))
    plugins.reset(extra=[module])
    try:
        assert cli(["check", "fakecli"]) == 1
        assert cli(["create", "fakecli", "--wheels", str(home / "nowhere")]) == 2, "a missing wheel directory"
        assert cli(["create", "fakecli", "--wheels", str(wheel.parent)]) == 0
        marker = json.loads((envs.of(cls).path / envs.MARKER).read_text())
        assert marker["wheels"] == str(wheel.parent)
        assert cli(["check", "fakecli"]) == 0
        assert cli(["list"]) == 0
        assert "fakecli-" in capsys.readouterr().out
        assert cli(["path", "fakecli"]) == 0
        assert cli(["remove", "fakecli"]) == 0
        assert envs.list_envs("fakecli") == []
        assert cli(["create", "nosuchbackend"]) == 2
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


# -- first use: ensure, the lock, ANYTUNE_CREATE_ENVS, wheel directories ----------------------------


def fake_run(made: list, delay: float = 0.0, fail_install: bool = False):
    """A stand-in for ``subprocess.run``: the venv step makes ``bin/python`` and is counted in ``made``."""
    def run(argv, **_):
        if argv[1:3] == ["-m", "venv"] or argv[:2] == ["uv", "venv"]:
            made.append(argv[-1])
            time.sleep(delay)
            (Path(argv[-1]) / "bin").mkdir(parents=True)
            (Path(argv[-1]) / "bin" / "python").write_text("")
        elif fail_install:
            return subprocess.CompletedProcess(argv, 1, "", "ERROR: no matching distribution\n")
        return subprocess.CompletedProcess(argv, 0, "", "")
    return run


def quiet() -> Console:
    """A console that writes into a buffer, wide enough that no line wraps."""
    return Console(file=io.StringIO(), width=400)


def test_ensure_in_two_threads_creates_once(home):
    env = envs.EngineEnv("demo", ("eng==1.0",), "eng")
    made: list = []
    consoles = [quiet(), quiet()]
    barrier = threading.Barrier(2)
    errors: list = []

    def job(console):
        barrier.wait()
        try:
            envs.ensure(env, console=console, run=fake_run(made, delay=0.5))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(c,)) for c in consoles]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors and env.exists()
    assert made == [str(env.path)], "exactly one venv creation"
    said = [c.file.getvalue() for c in consoles]
    assert sum("first use — creating its environment" in s for s in said) == 1
    assert sum("built by another job" in s for s in said) == 1
    assert any("waiting for another job" in s for s in said)
    builder = next(s for s in said if "first use" in s)
    notice = next(line for line in builder.splitlines() if "first use" in line)
    assert str(env.path) in notice and "eng==1.0" in notice and "ANYTUNE_CREATE_ENVS=0" in notice
    assert "✓ create venv" in builder and "ready in" in builder


CHILD = """
import subprocess, sys, time
from pathlib import Path
from core import envs

def run(argv, **_):
    if argv[1:3] == ["-m", "venv"]:
        with open(sys.argv[1], "a") as f:
            f.write("venv\\n")
        time.sleep(0.3)
        (Path(argv[-1]) / "bin").mkdir(parents=True)
        (Path(argv[-1]) / "bin" / "python").write_text("")
    return subprocess.CompletedProcess(argv, 0, "", "")

envs.ensure(envs.EngineEnv("demo", ("eng==1.0",), "eng"), run=run)
"""


def test_ensure_in_two_processes_creates_once(home, tmp_path):
    """Two jobs of a sweep wait on the lock (held here), then one builds and the other finds it built."""
    env = envs.EngineEnv("demo", ("eng==1.0",), "eng")
    counter = tmp_path / "made.txt"
    child_env = {**os.environ, "COLUMNS": "400", "PYTHONPATH": str(ROOT)}
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = []
    with envs.locked(env):
        for log in logs:
            with open(log, "w") as out:
                procs.append(subprocess.Popen([sys.executable, "-c", CHILD, str(counter)], cwd=ROOT,
                                              env=child_env, stdout=out, stderr=subprocess.STDOUT))
        deadline = time.time() + 15
        while not all("waiting for another job" in log.read_text() for log in logs):
            assert time.time() < deadline, [log.read_text() for log in logs]
            assert all(p.poll() is None for p in procs), [log.read_text() for log in logs]
            time.sleep(0.05)
        assert "(pid " in logs[0].read_text(), "the waiting job names the holder"
    for p in procs:
        assert p.wait(20) == 0
    said = [log.read_text() for log in logs]
    assert counter.read_text() == "venv\n", said
    assert sorted(("first use" in s, "built by another job" in s) for s in said) == [(False, True), (True, False)]
    assert env.exists()


def test_ensure_on_an_existing_env_does_nothing(home):
    env = envs.EngineEnv("demo", ("eng==1.0",), "eng")
    made: list = []
    envs.ensure(env, console=quiet(), run=fake_run(made))
    assert made and env.exists()
    env.lock_path.unlink()
    console = quiet()

    def refuse(argv, **_):
        raise AssertionError(f"ran {argv}")

    assert envs.ensure(env, console=console, run=refuse) == env
    assert console.file.getvalue() == "", "no output at all"
    assert not env.lock_path.exists(), "no lock taken"


def test_failed_ensure_leaves_nothing_and_frees_the_lock(home):
    env = envs.EngineEnv("demo", ("eng==1.0",), "eng")
    made: list = []
    with pytest.raises(AnytuneError, match="failed at 'install eng==1.0'"):
        envs.ensure(env, console=quiet(), run=fake_run(made, fail_install=True))
    assert not env.path.exists()
    envs.ensure(env, console=quiet(), run=fake_run(made))
    assert len(made) == 2 and env.exists()


def test_create_env_variable_turns_first_use_off(monkeypatch, home):
    monkeypatch.delenv("ANYTUNE_CREATE_ENVS", raising=False)
    assert envs.auto_create_enabled()
    for value in ("0", "false", "No", " off "):
        monkeypatch.setenv("ANYTUNE_CREATE_ENVS", value)
        assert not envs.auto_create_enabled(), value
    message = envs.missing_message(envs.EngineEnv("tt", ("torchtune==0.6.1",), "torchtune"))
    assert "python -m core.envs create tt" in message and "first-use creation is off" in message
    for value in ("1", "yes", ""):
        monkeypatch.setenv("ANYTUNE_CREATE_ENVS", value)
        assert envs.auto_create_enabled(), value
    message = envs.missing_message(envs.EngineEnv("tt", ("torchtune==0.6.1",), "torchtune"))
    assert "python -m core.envs create tt" in message and "ANYTUNE_CREATE_ENVS=0" in message


def test_wheel_directory_installs_without_an_index(monkeypatch, tmp_path):
    env = envs.EngineEnv("tt", ("torch==2.13.0", "eng==1"))
    wheels = tmp_path / "wheels"
    offline = ["--no-index", "--find-links", str(wheels)]
    for tool in ("pip", "uv"):
        make, *installs = envs.steps(env, tool, wheels)
        assert offline[0] not in make[1], "the venv step is unchanged"
        assert len(installs) == 2
        for _, argv, _ in installs:
            at = argv.index("--no-index")
            assert argv[at:at + 3] == offline and argv[-1] in env.requirements
        assert installs[0][1][:3] == ([str(env.python), "-m", "pip"] if tool == "pip" else ["uv", "pip", "install"])
        assert all("--no-index" not in argv for _, argv, _ in envs.steps(env, tool))
    monkeypatch.delenv("ANYTUNE_WHEELS", raising=False)
    assert envs.wheels_dir() is None
    with pytest.raises(AnytuneError, match="not a directory"):
        envs.wheels_dir(wheels)
    wheels.mkdir()
    monkeypatch.setenv("ANYTUNE_WHEELS", str(wheels))
    assert envs.wheels_dir() == wheels
    assert envs.wheels_dir(tmp_path) == tmp_path, "an explicit directory wins over ANYTUNE_WHEELS"


@pytest.mark.parametrize("tool", ["pip", pytest.param("uv", marks=pytest.mark.skipif(
    shutil.which("uv") is None, reason="uv is not on PATH"))])
def test_real_install_from_a_wheel_directory(home, tmp_path, monkeypatch, tool):
    """With an unreachable index creation fails; with a wheel directory it installs from there alone."""
    monkeypatch.setenv("ANYTUNE_INSTALLER", tool)
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    build_wheel(wheels, "throwaway", "0.1")
    for name in ("PIP_NO_INDEX", "PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "ANYTUNE_WHEELS", "UV_INDEX_URL",
                 "UV_DEFAULT_INDEX", "UV_EXTRA_INDEX_URL", "UV_FIND_LINKS", "UV_NO_INDEX", "UV_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    env = envs.EngineEnv("demo", ("throwaway==0.1",), "throwaway")
    monkeypatch.setenv("ANYTUNE_WHEELS", str(wheels))
    console = quiet()
    envs.ensure(env, console=console)
    assert env.exists() and envs.check(env) == []
    assert json.loads((env.path / envs.MARKER).read_text())["wheels"] == str(wheels)
    assert f"from the wheels in {wheels} (no index)" in console.file.getvalue()
    assert "--no-index --find-links" in (env.path / envs.LOG).read_text()
    if tool == "uv":
        return  # a uv venv has no pip to try the index with
    index = subprocess.run([str(env.python), "-m", "pip", "download", "-d", str(tmp_path / "dl"), "throwaway==0.1"],
                           capture_output=True, text=True, timeout=60)
    assert index.returncode != 0, "the index is unreachable: the wheel came from the directory alone"


def test_library_imports_no_plugin_machinery():
    """core.envs imports only core.errors of anytune, even inside functions: the backend module imports it."""
    tree = ast.parse((ROOT / "core" / "envs" / "__init__.py").read_text())
    ours = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            ours |= {a.name for a in node.names if a.name.split(".")[0] in ("core", "plugins")}
        elif isinstance(node, ast.ImportFrom):
            if node.level or (node.module or "").split(".")[0] in ("core", "plugins"):
                ours |= {f"{node.module}.{a.name}" if node.module == "core" else str(node.module) for a in node.names}
    assert ours == {"core.errors"}
    proc = subprocess.run([sys.executable, "-m", "core.envs", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "create" in proc.stdout


def test_a_job_creates_its_engines_environment_on_first_use(home, wheel, tmp_path, capfd, monkeypatch):
    """runner.run builds a missing managed environment before any progress display, then runs the engine
    with the environment's interpreter; with ANYTUNE_CREATE_ENVS=0 it names the command instead."""
    import fake_backend
    from core import plugins, runner
    from core.conformance import compose

    class Pinned(fake_backend.FakeBackend):
        """The fake backend, its 'engine' a wheel installed into an environment of its own."""

        name = "pinned"
        environment = [f"fakeengine @ {wheel.as_uri()}"]
        engine_distribution = "fakeengine"

    module = type(sys)("pinned_plugin")
    module.register_backends = fake_backend.core.hookimpl(lambda register: register(Pinned))
    reg = plugins.reset(extra=[module])
    base = ["backend=pinned", "train.device=cpu", "train.precision=fp32", "data.max_rows=8"]
    try:
        monkeypatch.setenv("ANYTUNE_CREATE_ENVS", "0")
        off = runner.run(compose(base), tmp_path / "off", reg)
        assert off["status"] == "failed" and off["error_type"] == "EngineMissing"
        assert "python -m core.envs create pinned" in off["error"]
        monkeypatch.delenv("ANYTUNE_CREATE_ENVS")
        shown = []
        result = runner.run(compose(base), tmp_path / "on", reg, display=lambda step, row: shown.append(step))
    finally:
        plugins.reset()
    assert result["status"] == "succeeded", result
    env = envs.of(Pinned)
    assert env.exists()
    command = json.loads((tmp_path / "on" / "plan" / "command.json").read_text())["command"]
    assert command[0] == str(env.python), command
    assert "first use" in capfd.readouterr().err and shown  # the notice came, then the display
