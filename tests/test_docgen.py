"""Generated docs cannot drift from the code, every field is documented, and ``python -m core.backends`` lists."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest

import core
from core import backends, docgen, plugins, schema

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class GhostConfig(core.BackendConfig):
    """Config node ``backend=ghost``."""

    name: str = "ghost"
    python: str = "/nowhere/python"
    flash: bool = True
    """Use the <fast> kernels | always."""


class Ghost(core.Trainer):
    """A backend whose engine is not installed; qlora needs cuda."""

    name: ClassVar[str] = "ghost"
    config_class = GhostConfig
    engine_distribution: ClassVar[str] = "ghost-engine-not-installed"
    install_hint: ClassVar[str] = "pip install ghost-engine"
    description: ClassVar[str] = "test double [not installed]"
    capabilities: ClassVar[core.Capabilities] = core.Capabilities(
        supports={"method.name": frozenset({"sft", "dpo"}), "peft.type": frozenset({"lora", "qlora"}),
                  "train.device": frozenset({"cpu", "cuda"}), "method.packing": frozenset({False, True})},
        reads=core.fields("method.*", "peft.type", "train.device"),
        requires={"peft.type=qlora": "cuda"})

    def plan(self, ctx):
        raise NotImplementedError


class Present(Ghost):
    """A backend whose engine is the interpreter's own pytest."""

    name: ClassVar[str] = "present"
    config_class = core.BackendConfig
    engine_distribution: ClassVar[str] = "pytest"
    description: ClassVar[str] = ""


class Plugin:
    """Registers the two test backends."""

    @core.hookimpl
    def register_backends(self, register):
        register(Ghost)
        register(Present)


class Broken:
    """A plugin whose registration fails."""

    @core.hookimpl
    def register_backends(self, register):
        raise RuntimeError("cannot find libghost.so")


@pytest.fixture
def fake_registry():
    yield plugins.reset(extra=[Plugin(), Broken()], autoload=False)
    plugins.reset()


# -- docs are generated and documented ------------------------------------------------


def test_committed_docs_are_current():
    """docs/config.md and docs/capabilities.md equal what the code generates (python -m core.docgen --write)."""
    reg = plugins.reset(autoload=True)
    assert not reg.broken, reg.broken
    for path, text in docgen.pages().items():
        assert (ROOT / path).read_text(encoding="utf-8") == text, f"{path} is stale: run python -m core.docgen --write"


def test_check_command(tmp_path):
    (tmp_path / "docs").mkdir()
    check = [sys.executable, "-m", "core.docgen", "--check", "--root", str(tmp_path)]
    assert subprocess.run(check, cwd=ROOT, capture_output=True).returncode == 1
    write = subprocess.run([sys.executable, "-m", "core.docgen", "--write", "--root", str(tmp_path)], cwd=ROOT,
                           capture_output=True, text=True)
    assert write.returncode == 0 and "docs/config.md" in write.stdout
    assert subprocess.run(check, cwd=ROOT, capture_output=True).returncode == 0
    (tmp_path / "docs" / "config.md").write_text("edited by hand\n")
    out = subprocess.run(check, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1 and "docs/config.md is stale" in out.stderr


@pytest.mark.parametrize("cls", [schema.JobConfig, schema.BackendConfig, *schema.SECTIONS.values()],
                         ids=lambda c: c.__name__)
def test_every_schema_field_has_a_docstring(cls):
    assert docgen.undocumented(cls) == []


def test_every_backend_config_field_has_a_docstring():
    for name, backend in plugins.reset(autoload=True).backends.items():
        assert docgen.undocumented(backend.config_class) == [], name


def test_undocumented_field_is_reported():
    @dataclasses.dataclass
    class Half:
        documented: int = 1
        """Has a docstring."""
        bare: int = 2

    assert docgen.undocumented(Half) == ["Half.bare"]


def test_field_docs_pair_each_field_with_its_docstring():
    docs = docgen.field_docs(schema.TrainConfig)
    assert docs["learning_rate"] == ("float", "Peak learning rate.")
    assert list(docs) == [f.name for f in dataclasses.fields(schema.TrainConfig)]
    inherited = docgen.field_docs(GhostConfig)  # redeclared without a docstring: the base's is kept
    assert inherited["python"][1] == docgen.field_docs(schema.BackendConfig)["python"][1]
    assert inherited["flash"] == ("bool", "Use the <fast> kernels | always.")


def test_config_reference_content():
    text = docgen.config_reference({"ghost": Ghost}, {"export": {}, "eval": {}})
    for section in ("## Job", "## model", "## data", "## method", "## peft", "## train", "## backend", "### ghost",
                    "## export", "## eval"):
        assert f"\n{section}\n" in text
    row = next(line for line in text.splitlines() if line.startswith("| `peft.type`"))
    assert "`lora`" in row and "`none`, `lora`, `dora`, `qlora`" in row and "needs CUDA" in row
    assert "| `model.name_or_path` | `str` | *required* |" in text
    assert "| `peft.dropout` | `float` | `0.0` | `>= 0` and `< 1` |" in text  # ranges come from the schema
    assert "| `peft.target_modules` | `List[str]` | `[all-linear]` |" in text
    assert "| `backend.flash` | `bool` | `true` |  | Use the &lt;fast> kernels \\| always. |" in text
    assert "`backend=ghost`" in text and "Config node `backend=ghost`." in text


def test_capability_matrix(fake_registry):
    text = docgen.capability_matrix(fake_registry)
    lines = text.splitlines()
    assert lines[0] == "| feature | ghost | present |"
    assert "| `peft.type` | lora, qlora (qlora needs cuda) | lora, qlora (qlora needs cuda) |" in lines
    assert "| `method.packing` | false, true | false, true |" in lines
    assert "| `train.precision` | fp32 | fp32 |" in lines  # left out: only the default
    assert "| needs | — | — |" in lines
    assert len(lines) == 3 + len(core.capabilities.FEATURES)


def test_reads_matrix():
    text = docgen.reads_matrix({"ghost": Ghost, "trl": plugins.registry().backend("trl")})
    assert "| `peft.r` | — | reads |" in text.splitlines()
    assert "data.train" not in text  # read by the core for every backend


# -- python -m core.backends ------------------------------------------------------------------


def test_backends_json(fake_registry, capsys):
    assert backends.main(["--json"], registry=fake_registry) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {b["name"]: b for b in data["backends"]}
    assert rows["ghost"]["version"] is None and rows["ghost"]["install_hint"] == "pip install ghost-engine"
    assert rows["ghost"]["python"] == "/nowhere/python"  # the config node's default interpreter
    assert rows["present"]["version"] == pytest.__version__ and rows["present"]["python"] == sys.executable
    assert rows["ghost"]["capabilities"]["method.name"] == ["sft", "dpo"]
    assert rows["ghost"]["requires"] == {"peft.type=qlora": "cuda"}
    assert data["broken"] == [{"name": next(iter(fake_registry.broken)),
                               "error": "RuntimeError: cannot find libghost.so"}]


def test_backends_table(fake_registry):
    import io

    from rich.console import Console

    buf = io.StringIO()  # a console wide enough that no cell folds, whatever the paths and the terminal
    backends.render(backends.listing(fake_registry), console=Console(file=buf, width=400))
    out = buf.getvalue()
    for text in ("ghost", "present", "not installed", "pip install ghost-engine", f"pytest {pytest.__version__}",
                 "qlora(cuda)", "test double [not installed]", "failed to load", "cannot find libghost.so"):
        assert text in out, text


def test_backends_matrix(fake_registry, capsys):
    backends.main(["--matrix"], registry=fake_registry)
    assert capsys.readouterr().out == docgen.capability_matrix(fake_registry)


def test_backends_command_runs():
    out = subprocess.run([sys.executable, "-m", "core.backends", "--json"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    listed = {b["name"] for b in json.loads(out.stdout)["backends"]}
    assert listed >= set(docgen.first_party(plugins.reset(autoload=True)))
