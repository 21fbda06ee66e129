"""The GGUF exporter class and its config node."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import core
from core import did_you_mean
from plugins import hftrainer
from plugins.gguf import llamacpp
from plugins.merged.step import HERE as MERGED, OUT as MERGED_OUT

HERE = Path(__file__).parent
OUT = f"{core.runproto.ARTIFACTS}/gguf"
"""Where the GGUF file and its verification go, relative to the run directory."""
TOLERANCES = {"f32": 1e-3, "f16": 1e-2, "bf16": 0.1, "q8_0": 0.1}
"""Largest logit difference accepted between llama.cpp and transformers, per outtype (other quantisations: 1.0)."""
PRE_TOKENIZERS = ("gpt-2",)
"""llama.cpp pre-tokenizer names ``export.gguf.ggml_pre`` may give (the one the exporter can tell applies)."""


@dataclass
class GgufConfig(core.StepConfig):
    """Config node ``export=[gguf]`` (fields: ``export.gguf.<field>=...``)."""

    name: str = "gguf"
    """Exporter name."""
    outtype: str = "f16"
    """f32, f16, bf16 or q8_0 (llama.cpp's converter writes it), or a quantisation made from f16 through
    llama.cpp's llama_model_quantize: q4_0, q4_1, q5_0, q5_1, q2_k, q3_k_s/m/l, q4_k_s, q4_k_m, q5_k_s, q5_k_m,
    q6_k, iq4_nl, iq4_xs. k-quants fall back to other types for tensors whose rows are not a multiple of 256."""
    ggml_pre: Optional[str] = None
    """When llama.cpp does not recognise a BPE tokenizer's pre-tokenizer: the one to write as the GGUF's
    ``tokenizer.ggml.pre`` (gpt-2);
    null: a plain byte-level GPT-2 split (tokenizer.json's ByteLevel with use_regex) is written as gpt-2, any other
    is refused. Never overrides a pre-tokenizer llama.cpp recognises; the verification compares token ids."""
    verify: bool = True
    """Load the file in llama.cpp and compare with transformers on one prompt (token ids must be equal, the
    largest logit difference within ``max_logit_diff``); the result goes to ``artifacts/gguf/verify.json``."""
    max_logit_diff: Optional[float] = core.number(None, gt=0)
    """Largest logit difference accepted; null: f32 1e-3, f16 1e-2, bf16 and q8_0 0.1, other quantisations 1.0."""
    threads: int = core.number(0, ge=0)
    """Threads for quantising and for the llama.cpp check; 0: every core."""


class GgufExporter(core.Exporter):
    """llama.cpp's own converter (``convert_hf_to_gguf.py`` of the vendored llama.cpp) on the merged model
    (``artifacts/merged``, made first when ``export=[merged]`` did not), quantised through ``llama_model_quantize``,
    then verified: loaded in llama.cpp, the same prompt through it and transformers, token ids equal and logits
    close, the chat template of record in ``tokenizer.chat_template``. Runs in an environment of its own."""

    name: ClassVar[str] = "gguf"
    config_class: ClassVar[type] = GgufConfig
    engine_distribution: ClassVar[str] = "llama-cpp-python"
    install_hint: ClassVar[str] = "python -m core.envs create gguf"
    description: ClassVar[str] = "GGUF for llama.cpp/Ollama: llama.cpp's converter and quantiser, verified"
    environment: ClassVar[list[str]] = core.extra_requirements("anytune", "gguf")
    """The exporter's environment: anytune's ``[gguf]`` extra (llama-cpp-python, built from source, and what
    the converter and the merge need), as tested."""
    capabilities: ClassVar[core.Capabilities] = core.Capabilities(needs=frozenset({"weights", "tokenizer"}))

    def check(self) -> None:
        """The outtype is one llama.cpp makes without calibration data, the pre-tokenizer one it has."""
        t, where = self.config.outtype, "export.gguf"
        if t in llamacpp.NEEDS_IMATRIX:
            raise core.ConfigError(f"{where}.outtype={t} needs an importance matrix (llama-imatrix on calibration "
                                   f"text), which export=[gguf] does not compute; types it makes: "
                                   f"{', '.join(llamacpp.outtypes())}")
        if t not in llamacpp.outtypes():
            raise core.ConfigError(f"{where}.outtype={t!r} is not a llama.cpp type export=[gguf] makes"
                                   f"{did_you_mean(t, llamacpp.outtypes())}; types: "
                                   f"{', '.join(llamacpp.outtypes())}")
        if self.config.ggml_pre is not None and self.config.ggml_pre not in PRE_TOKENIZERS:
            raise core.ConfigError(f"{where}.ggml_pre={self.config.ggml_pre!r}: give one of "
                                   f"{', '.join(PRE_TOKENIZERS)}, or null for llama.cpp's own detection")

    def tolerance(self) -> float:
        """The largest logit difference accepted for this outtype."""
        return self.config.max_logit_diff or TOLERANCES.get(self.config.outtype, 1.0)

    def gguf_path(self) -> str:
        """The file this exporter writes, relative to the run directory."""
        return f"{OUT}/model-{self.config.outtype}.gguf"

    def plan(self, ctx: core.Context) -> core.Plan:
        """Write ``gguf.json``, ship the worker, the merge worker and llama.cpp's converter (fetched once)."""
        adapter, model = ctx.local("adapter"), ctx.local("model")
        if adapter is None and model is None:
            raise core.ConfigError(f"export=[gguf] needs the trained weights (artifacts/adapter or artifacts/model); "
                                   f"this run left none (artefacts: {sorted(ctx.artifacts) or 'none'})")
        source = llamacpp.converter()
        conv = ctx.plan_dir / "llama.cpp"
        shutil.rmtree(conv, ignore_errors=True)
        shutil.copytree(source, conv)
        c = self.config
        merge = {"base": str(ctx.job.model.name_or_path),
                 "adapter": ctx.rel(adapter) if adapter is not None else None,
                 "model": ctx.rel(model) if adapter is None and model is not None else None,
                 "template": ctx.rel(ctx.data.template) if ctx.data.template is not None else None,
                 "dtype": "auto", "trust_remote_code": bool(ctx.job.model.trust_remote_code), "out": MERGED_OUT}
        spec = {"merge": merge, "merged": MERGED_OUT, "outtype": c.outtype,
                "ftype": llamacpp.QUANT_TYPES.get(c.outtype), "out": self.gguf_path(), "verify": bool(c.verify),
                "tolerance": self.tolerance(), "pre_tokenizer": c.ggml_pre, "threads": int(c.threads),
                "converter": ctx.rel(conv), "prompt": verify_prompt(ctx), "report": f"{OUT}/verify.json"}
        files = [ctx.write_json("gguf.json", spec),
                 *ctx.ship(HERE / "worker.py", rename={"worker.py": "gguf_worker.py"}),
                 *ctx.ship(MERGED / "worker.py", rename={"worker.py": "merged_worker.py"}),
                 *hftrainer.ship(ctx)]
        return core.Plan(command=[self.python(), files[1], files[0]], files=files + [ctx.rel(conv)])


def verify_prompt(ctx: core.Context) -> dict:
    """The verification prompt: the first training conversation (its turns before the last assistant turn, with
    the generation prompt) when there is a template of record, else the first record's text."""
    rows = core.runproto.read_jsonl(str(ctx.data.train))[:1]
    rec = rows[0] if rows else {}
    if ctx.data.template is not None and rec.get("messages"):
        msgs = [{"role": m["role"], "content": m["content"]} for m in rec["messages"] if m.get("content")]
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=len(msgs))
        return {"messages": msgs[:last] or msgs, "text": None}
    text = rec.get("text") or rec.get("prompt") or "The quick brown fox jumps over the lazy dog. 1 + 2 = 3"
    return {"messages": None, "text": text}
