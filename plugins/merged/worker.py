"""Merged-model exporter worker: merges an adapter into its base (or re-saves a full model) as a plain
Hugging Face model in ``artifacts/merged``.

Usage (from the run directory): ``python plan/export-merged/merged_worker.py plan/export-merged/merged.json``.
Imports only transformers, peft, torch and the standard library (plus ``runproto``, ``lossmask`` and
``hfglue``, shipped beside this file), so an ejected plan runs where anytune is not installed. The output is written beside
the target and moved into place when complete; the outcome names it; exits 0, 1 or 130.
"""
from __future__ import annotations

import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hfglue  # noqa: E402
import runproto  # noqa: E402


def target_dtype(spec):
    """The torch dtype to save in: the spec's, or for auto the base model's own (float32 if it names none)."""
    import torch
    from transformers import AutoConfig

    if spec["dtype"] != "auto":
        return getattr(torch, spec["dtype"])
    config = AutoConfig.from_pretrained(spec["base"], trust_remote_code=spec["trust_remote_code"])
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def merged_model(spec, dtype):
    """The adapter merged into its base (peft's merge_and_unload), or the full fine-tune's model, in ``dtype``."""
    from transformers import AutoModelForCausalLM

    trust = spec["trust_remote_code"]
    if spec["adapter"]:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(spec["base"], dtype=dtype, trust_remote_code=trust)
        model = PeftModel.from_pretrained(base, spec["adapter"]).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype, trust_remote_code=trust)
    return model.to(dtype)


def pin_template(out_dir, template):
    """Make the template of record the only one the saved tokenizer carries: ``chat_template.jinja`` holds
    it byte for byte, and ``tokenizer_config.json`` (read by older transformers) holds it or none."""
    runproto.atomic_write_text(os.path.join(out_dir, "chat_template.jinja"), template)
    for stale in ("chat_template.json", "additional_chat_templates"):
        path = os.path.join(out_dir, stale)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.unlink(path)
    config_path = os.path.join(out_dir, "tokenizer_config.json")
    if os.path.exists(config_path):
        config = runproto.read_json(config_path)
        if "chat_template" in config and config["chat_template"] != template:
            config["chat_template"] = template
            runproto.atomic_write_text(config_path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def export(spec):
    """Write the merged model into ``spec["out"]``; returns the outcome's artefacts."""
    out = spec["out"]
    partial = out + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    model = merged_model(spec, target_dtype(spec))
    tokenizer = hfglue.load_tokenizer(spec["base"], spec["template"], spec["trust_remote_code"], pad=False)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    if spec["template"]:
        pin_template(partial, tokenizer.chat_template)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(partial, out)
    return {"merged": runproto.local_artifact(out)}


def main(argv):
    """Export the model described by ``argv[1]``; record the outcome; exit 0, 1 (failed) or 130 (interrupted)."""
    spec = runproto.read_json(argv[1])
    outcome = runproto.Outcome(("transformers", "peft", "torch", "safetensors"))
    with outcome as out:
        out["artifacts"] = export(spec)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
