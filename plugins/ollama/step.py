"""The Ollama exporter class and its config node."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import core
from core import chatrender
from plugins.ollama import gotemplate

HERE = Path(__file__).parent


@dataclass
class OllamaConfig(core.StepConfig):
    """Config node ``export=[ollama]`` (fields: ``export.ollama.<field>=...``)."""

    name: str = "ollama"
    """Exporter name."""
    template: Optional[str] = None
    """A Go template file of your own for TEMPLATE (checked against the template of record like a derived one);
    null: derived from the chat template of record."""
    system: Optional[str] = None
    """Default system prompt (the Modelfile's SYSTEM); null: none."""


class OllamaExporter(core.Exporter):
    """Writes ``Modelfile`` beside the GGUF of ``export=[gguf]``: FROM the GGUF, the chat template of record as a Go
    TEMPLATE over ``.Messages`` (Ollama runs no Jinja, and otherwise falls back to ``{{ .Prompt }}``, dropping roles),
    and PARAMETER stop for the end-of-turn and EOS tokens. The Go template is checked to render the same text as
    the Jinja template on sample conversations before training starts; ``ollama create NAME -f Modelfile``."""

    name: ClassVar[str] = "ollama"
    config_class: ClassVar[type] = OllamaConfig
    description: ClassVar[str] = "Ollama Modelfile beside the GGUF: the template of record as a Go TEMPLATE, stops"
    capabilities: ClassVar[core.Capabilities] = core.Capabilities(needs=frozenset({"weights", "tokenizer", "template"}))

    def check(self) -> None:
        """export=[gguf] comes before export=[ollama] when both run; a template file exists."""
        names = list(self.job.get("export") or {})
        if "gguf" in names and names.index("gguf") > names.index("ollama"):
            raise core.ConfigError("export=[ollama] writes its Modelfile beside the GGUF: list gguf first "
                                   "(export=[gguf,ollama])")
        if self.config.template and not Path(self.config.template).expanduser().is_file():
            raise core.ConfigError(f"export.ollama.template={self.config.template}: no such file")

    def gguf(self, ctx: core.Context) -> str:
        """The GGUF the Modelfile points at, relative to the run directory: the one ``export=[gguf]`` of this job
        writes, else the one a finished run left."""
        if "gguf" in (ctx.job.get("export") or {}):
            from plugins.gguf.step import GgufExporter

            return GgufExporter(ctx.job).gguf_path()
        done = ctx.local("gguf")
        if done is not None:
            return ctx.rel(done)
        raise core.ConfigError("export=[ollama] needs a GGUF: export=[gguf,ollama] (or python -m core.after RUN_DIR "
                               "export=[gguf,ollama] on a finished run)")

    def plan(self, ctx: core.Context) -> core.Plan:
        """Translate and check the template, write ``ollama.json``, ship the (standard-library) worker."""
        gguf = self.gguf(ctx)
        if ctx.data.template is None:
            raise core.ConfigError(f"export=[ollama] writes the chat template of record, and {ctx.data.dir} has none")
        jinja_text = ctx.data.template.read_text(encoding="utf-8")
        model = str(ctx.job.model.name_or_path)
        tok_dir = core.tokenizer_files(model, bool(ctx.job.get("offline")))
        specials = chatrender.special_tokens(tok_dir) if tok_dir else {}
        compiled = chatrender.environment().from_string(jinja_text)

        def jinja(messages, generation):
            return chatrender.render(compiled, messages, generation, specials)

        try:
            blocks = gotemplate.derive(jinja, specials.get("bos_token"))
        except gotemplate.CannotExpress as exc:
            if not self.config.template:
                raise core.ConfigError(f"export=[ollama]: the chat template of record cannot be written as an Ollama "
                                       f"template ({exc}); write one yourself and give export.ollama.template=FILE"
                                       ) from exc
            blocks = None
        go = (Path(self.config.template).expanduser().read_text(encoding="utf-8") if self.config.template
              else gotemplate.go_template(blocks))
        problems = gotemplate.check(go, jinja, blocks.dropped_head if blocks else "")
        if problems:
            raise core.ConfigError("export=[ollama]: the Ollama template does not render what the chat template of "
                                   "record renders:\n  " + "\n  ".join(problems[:3]))
        spec = {"gguf": gguf, "modelfile": os.path.join(os.path.dirname(gguf), "Modelfile"), "template": go,
                "stops": gotemplate.stops(blocks, specials.get("eos_token")) if blocks else
                [specials["eos_token"]] if specials.get("eos_token") else [],
                "system": self.config.system, "notes": blocks.notes if blocks else [],
                "bos_left_to_runtime": bool(blocks and blocks.dropped_head)}
        files = [ctx.write_json("ollama.json", spec),
                 *ctx.ship(HERE / "worker.py", rename={"worker.py": "ollama_worker.py"}), *ctx.ship(core.runproto)]
        return core.Plan(command=[self.python(), files[1], files[0]], files=files)
