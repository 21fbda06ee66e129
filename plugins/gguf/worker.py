"""GGUF exporter worker: merged model -> llama.cpp's converter -> (llama_model_quantize) -> verified GGUF.

Usage (from the run directory): ``python plan/export-gguf/gguf_worker.py plan/export-gguf/gguf.json``.
Imports only llama-cpp-python, transformers, peft, torch, numpy and the standard library, plus what is shipped
beside this file: ``merged_worker`` (the merge), ``runproto``, ``hfglue`` and llama.cpp's converter
(``llama.cpp/convert_hf_to_gguf.py`` with its ``conversion`` package and ``gguf-py``), so an ejected plan runs
where anytune is not installed. Exits 0, 1 (failed, including a verification that did not hold) or 130.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import merged_worker  # noqa: E402
import runproto  # noqa: E402


class VerificationFailed(RuntimeError):
    """The GGUF does not behave as the model it came from."""


def merged_dir(spec):
    """``artifacts/merged`` (the merged model with the template of record), made now unless export=[merged] has."""
    out = spec["merged"]
    if os.path.isfile(os.path.join(out, "config.json")):
        return out, False
    merged_worker.export(spec["merge"])
    return out, True


def byte_level_gpt2(model_dir):
    """True when tokenizer.json's pre-tokenizer is exactly GPT-2's byte-level split (ByteLevel with its regex,
    no prefix space, no normaliser): llama.cpp's ``gpt2`` pre-tokenizer splits text the same way."""
    path = os.path.join(model_dir, "tokenizer.json")
    if not os.path.isfile(path):
        return False
    tok = runproto.read_json(path)
    pre = tok.get("pre_tokenizer") or {}
    return (pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")
            and tok.get("normalizer") is None and (tok.get("model") or {}).get("type") == "BPE")


def load_converter(spec):
    """llama.cpp's converter module, its vendored gguf-py first on the path (as the script itself arranges)."""
    conv = os.path.abspath(spec["converter"])
    for p in (os.path.join(conv, "gguf-py"), conv):
        if p not in sys.path:
            sys.path.insert(0, p)
    import importlib

    return importlib.import_module("convert_hf_to_gguf")


def convert(spec, model_dir, outfile, outtype, notes):
    """Run llama.cpp's converter in this process (its ``main``); an unrecognised byte-level GPT-2 pre-tokenizer is
    written as ``gpt-2`` (or as ``spec["pre_tokenizer"]``, from ``export.gguf.ggml_pre``), recorded in ``notes``."""
    module = load_converter(spec)
    from conversion import base

    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            mapped = spec["pre_tokenizer"] or ("gpt-2" if byte_level_gpt2(model_dir) else None)
            if mapped is None:
                raise NotImplementedError(
                    "llama.cpp does not recognise this tokenizer's BPE pre-tokenizer, and it is not a plain "
                    "byte-level GPT-2 split anytune can map; set export.gguf.ggml_pre to the llama.cpp one "
                    "that splits text the same way (the verification compares token ids)") from None
            notes["pre_tokenizer"] = {"written": mapped, "how": "mapped: llama.cpp did not recognise the tokenizer"
                                      + ("" if spec["pre_tokenizer"] else "; tokenizer.json is byte-level GPT-2")}
            return mapped

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", model_dir, "--outfile", outfile, "--outtype", outtype]
    try:
        module.main()
    finally:
        sys.argv = argv
        base.TextModel.get_vocab_base_pre = original
    notes.setdefault("pre_tokenizer", {"written": "llama.cpp's own detection", "how": "recognised"})


def quantize(src, dest, ftype, threads):
    """``llama_model_quantize(src, dest, params)`` with llama.cpp's default parameters and ``ftype``."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(src.encode(), dest.encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {dest}, ftype {ftype}) returned {rc}")


def gguf_metadata(path, spec):
    """The file's chat template and tensor types (read with the vendored gguf-py)."""
    load_converter(spec)
    import gguf

    reader = gguf.GGUFReader(path)
    field = reader.get_field("tokenizer.chat_template")
    template = field.contents() if field is not None else None
    types = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return template, types


def prompt_of(spec, tokenizer):
    """The verification text: the sample conversation rendered with the template of record (generation prompt)."""
    p = spec["prompt"]
    if p.get("messages") and tokenizer.chat_template:
        return tokenizer.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True)
    return p.get("text") or ""


def verify(spec, model_dir, path, template):
    """Same prompt through llama.cpp and transformers: token ids, largest logit difference, greedy agreement."""
    import llama_cpp
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = prompt_of(spec, tokenizer)
    hf_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
        hf_ids = [tokenizer.bos_token_id] + hf_ids
    threads = spec["threads"] or os.cpu_count() or 1
    llm = llama_cpp.Llama(model_path=path, n_ctx=max(64, len(hf_ids) + 8), logits_all=True, verbose=False,
                          n_threads=threads, n_batch=max(64, len(hf_ids) + 8))
    cpp_ids = llm.tokenize(text.encode("utf-8"), add_bos=bool(llm.metadata.get("tokenizer.ggml.add_bos_token")
                                                                 == "true"), special=True)
    report = {"prompt": text, "tokens": {"transformers": hf_ids, "llama.cpp": list(cpp_ids)},
              "tokens_equal": list(cpp_ids) == hf_ids, "chat_template_equal": template == spec.get("_template"),
              "tolerance": spec["tolerance"]}
    if not report["tokens_equal"]:
        return report
    llm.reset()
    llm.eval(list(cpp_ids))
    cpp = np.array(llm.scores[: len(cpp_ids)], dtype=np.float32)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        hf = model(torch.tensor([hf_ids])).logits[0].float().numpy()
    vocab = min(hf.shape[-1], cpp.shape[-1])
    diff = np.abs(hf[:, :vocab] - cpp[:, :vocab])
    report.update(max_logit_diff=float(diff.max()), mean_logit_diff=float(diff.mean()),
                  argmax_agree=float((hf[:, :vocab].argmax(-1) == cpp[:, :vocab].argmax(-1)).mean()),
                  positions=len(hf_ids))
    return report


def export(spec):
    """Merge (if needed), convert, quantise, verify; returns the outcome's artefacts. A failure leaves no file."""
    try:
        return _export(spec)
    except BaseException:
        for leftover in (spec["out"] + ".partial", spec["out"] + ".f16.partial"):
            if os.path.exists(leftover):
                os.unlink(leftover)
        raise


def _export(spec):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s:%(message)s")
    model_dir, made = merged_dir(spec)
    out = spec["out"]
    os.makedirs(os.path.dirname(out), exist_ok=True)
    partial = out + ".partial"
    notes = {}
    if spec["ftype"] is None:
        convert(spec, model_dir, partial, spec["outtype"], notes)
    else:
        f16 = out + ".f16.partial"
        convert(spec, model_dir, f16, "f16", notes)
        quantize(f16, partial, spec["ftype"], spec["threads"] or os.cpu_count() or 1)
        os.unlink(f16)
    template_path = os.path.join(model_dir, "chat_template.jinja")
    spec["_template"] = open(template_path, encoding="utf-8").read() if os.path.isfile(template_path) else None
    template, types = gguf_metadata(partial, spec)
    report = {"file": out, "outtype": spec["outtype"], "tensor_types": types, "bytes": os.path.getsize(partial),
              "chat_template": template is not None, "chat_template_equal": template == spec["_template"], **notes}
    if spec["verify"]:
        report.update(verify(spec, model_dir, partial, template))
    runproto.atomic_write_text(spec["report"], json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    problems = []
    if spec["_template"] is not None and not report["chat_template_equal"]:
        problems.append("the GGUF's tokenizer.chat_template is not the chat template of record")
    if spec["verify"] and not report["tokens_equal"]:
        problems.append(f"llama.cpp tokenises the prompt differently from transformers "
                        f"({len(report['tokens']['llama.cpp'])} vs {len(report['tokens']['transformers'])} tokens)")
    elif spec["verify"] and report["max_logit_diff"] > spec["tolerance"]:
        problems.append(f"largest logit difference {report['max_logit_diff']:.3g} exceeds {spec['tolerance']:g}")
    if problems:
        raise VerificationFailed(f"{'; '.join(problems)} (details: {spec['report']})")
    os.replace(partial, out)
    arts = {"gguf": runproto.local_artifact(out, outtype=spec["outtype"])}
    if made:
        arts["merged"] = runproto.local_artifact(spec["merged"])
    return arts


def main(argv):
    """Export as ``argv[1]`` says; record the outcome; exit 0, 1 (failed) or 130 (interrupted)."""
    spec = runproto.read_json(argv[1])
    outcome = runproto.Outcome(("llama-cpp-python", "transformers", "peft", "torch", "numpy"))
    with outcome as out:
        out["artifacts"] = export(spec)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
