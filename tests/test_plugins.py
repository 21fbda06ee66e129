"""Plugin discovery through a real entry point, broken plugins, capability refusals."""
import subprocess
import sys
import textwrap

import pytest

import core
from core import plugins
from core.conformance import compose
from core.errors import UnsupportedFeature
from core.checks import check_capabilities

DIST = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "anytune-thirdparty-demo"
        version = "0.1"
        [project.entry-points.anytune]
        demo = "anytune_demo_backend"
        broken = "anytune_broken_backend"
        [tool.setuptools]
        py-modules = ["anytune_demo_backend", "anytune_broken_backend"]
    """,
    "anytune_demo_backend.py": """
        from dataclasses import dataclass
        import core

        @dataclass
        class DemoConfig(core.BackendConfig):
            name: str = "demo"
            flavour: str = "vanilla"

        class DemoBackend(core.Trainer):
            name = "demo"
            config_class = DemoConfig
            capabilities = core.Capabilities(supports={"method.name": frozenset({"sft", "dpo"})},
                                             reads=core.fields("method.name"))
            def plan(self, ctx):
                return core.Plan(command=["true"])

        @core.hookimpl
        def register_backends(register):
            register(DemoBackend)
    """,
    "anytune_broken_backend.py": "raise ImportError('this plugin is broken on purpose')\n",
}


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """Build and install a third-party plugin distribution into a fresh target dir."""
    src = tmp_path_factory.mktemp("src")
    for name, text in DIST.items():
        (src / name).write_text(textwrap.dedent(text))
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(src)], check=True)
    sys.path.insert(0, str(target))
    yield plugins.reset()
    sys.path.remove(str(target))
    for mod in ("anytune_demo_backend", "anytune_broken_backend"):
        sys.modules.pop(mod, None)
    plugins.reset()


def test_entry_point_plugin_registers_backend_and_config(installed_plugin, capsys):
    reg = installed_plugin
    assert "demo" in reg.backends and "trl" in reg.backends
    assert reg.sources["backend/demo"] == "anytune-thirdparty-demo"
    cfg = compose(["backend=demo", "backend.flavour=mint"])  # its node is in the ConfigStore
    assert cfg.backend.flavour == "mint"


def test_broken_plugin_is_reported_and_others_load(installed_plugin):
    assert "broken" in installed_plugin.broken
    assert "broken on purpose" in installed_plugin.broken["broken"]
    assert "trl" in installed_plugin.backends


def test_disable_plugins_env(monkeypatch):
    monkeypatch.setenv("ANYTUNE_DISABLE_PLUGINS", "trl")
    try:
        assert "trl" not in plugins.reset().backends
    finally:
        monkeypatch.delenv("ANYTUNE_DISABLE_PLUGINS")
        plugins.reset()


def test_unknown_backend_lists_installed():
    with pytest.raises(core.errors.AnytuneError, match="installed backends: .*trl"):
        plugins.registry().backend("trll")
    with pytest.raises(core.errors.AnytuneError, match="did you mean 'trl'"):
        plugins.registry().backend("trll")


def test_registering_a_non_step_is_refused():
    class Wrong:
        @core.hookimpl
        def register_backends(self, register):
            register(type("NotATrainer", (), {"name": "nope"}))

    reg = plugins.reset(extra=[Wrong()], autoload=False)
    try:
        assert "nope" not in reg.backends and "must subclass core.Trainer" in str(reg.broken)
    finally:
        plugins.reset()


def test_capability_refusal_names_able_backends():
    import fake_backend

    reg = plugins.reset(extra=[fake_backend])
    try:
        cfg = compose(["backend=fake", "method=orpo", "data=demo_pref", "train.device=cpu",
                       "train.precision=fp32"])
        with pytest.raises(UnsupportedFeature) as err:
            check_capabilities(cfg, reg.backend("fake"), reg.backends, "preference")
        assert "method.name=orpo" in str(err.value) and "trl" in str(err.value)
        cfg = compose(["backend=trl", "peft=qlora", "train.device=cpu", "train.precision=fp32"])
        with pytest.raises(UnsupportedFeature, match="needs train.device=cuda"):
            check_capabilities(cfg, reg.backend("trl"), reg.backends, "messages")
    finally:
        plugins.reset()
