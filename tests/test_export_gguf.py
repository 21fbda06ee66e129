"""export=[gguf]: llama.cpp's converter on the merged model, llama_model_quantize, verification in llama.cpp.

Fast, always: the refusals before anything runs, the plan (llama.cpp's converter fetched from the
llama-cpp-python sdist and shipped), the quantisation table against the vendored llama.h, the pre-tokenizer
mapping's detection. Slow, when the exporter's environment exists (building llama.cpp costs ~10 CPU-minutes:
``python -m core.envs create gguf``, or ANYTUNE_BUILD_GGUF=1 lets these tests create it): f16, q8_0 and q4_k_m
exports of a trained run loaded back in llama.cpp with equal token ids and logits within the stated bounds,
the chat template of record in the file, the Modelfile beside it, and the cross-engine sweep.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core import envs, plugins, runner, runproto, scores
from core.conformance import SMALL, compose
from plugins.gguf import llamacpp
from plugins.gguf.step import GgufExporter

ROOT = Path(__file__).resolve().parents[1]
BOUNDS = {"f16": 1e-2, "q8_0": 5e-2, "q4_k_m": 0.5}
"""Largest logit difference asserted per outtype (seen on the tiny model: f16 ~2e-4, q8_0 ~7e-3, q4_k_m ~5e-2)."""


def job(*overrides: str):
    keys = {o.split("=", 1)[0] for o in overrides}
    return compose([o for o in SMALL if o.split("=", 1)[0] not in keys] + list(overrides))


def gguf_env():
    """Skip unless the exporter's environment exists (or may be built: ANYTUNE_BUILD_GGUF=1)."""
    env = envs.of(GgufExporter)
    os.environ.setdefault("CMAKE_ARGS", "-DGGML_NATIVE=OFF")  # a portable llama.cpp build, if one is made here
    if not env.exists() and os.environ.get("ANYTUNE_BUILD_GGUF") != "1":
        pytest.skip(f"the GGUF environment ({env.path}) does not exist; build it once with "
                    "`python -m core.envs create gguf` (~10 CPU-minutes) or set ANYTUNE_BUILD_GGUF=1")
    return env


# -- before the converter (fast) ----------------------------------------------------------------------------------


def test_registered_with_its_pins():
    cls = plugins.registry().step("export", "gguf")
    assert cls is GgufExporter and cls.capabilities.needs == {"weights", "tokenizer"}
    assert f"llama-cpp-python=={llamacpp.VERSION}" in cls.environment  # the converter's sdist = the runtime
    assert cls.engine_distribution == "llama-cpp-python"


@pytest.mark.parametrize("overrides, words", [
    (["export=[gguf]", "export.gguf.outtype=q4_km"], ["q4_km", "did you mean 'q4_k_m'", "q8_0"]),
    (["export=[gguf]", "export.gguf.outtype=iq2_xxs"], ["importance matrix"]),
    (["export=[gguf]", "export.gguf.ggml_pre=llama3"], ["ggml_pre", "gpt-2"]),
    (["export=[gguf]", "export.gguf.max_logit_diff=0"], ["export.gguf.max_logit_diff"]),
    (["export=[gguf]", "train.save_artifacts=false"], ["train.save_artifacts"]),
], ids=["unknown-type", "imatrix", "pre-tokenizer", "tolerance", "no-artifacts"])
def test_refused_before_anything_runs(tmp_path, overrides, words):
    result = runner.run(job(*overrides), tmp_path)
    assert result["status"] == "failed", result
    for word in words:
        assert word in result["error"], result["error"]
    assert not (tmp_path / "data").exists() and not (tmp_path / "plan").exists()


def test_plan_ships_llama_cpps_converter(tmp_path):
    result = runner.run(job("plan_only=true", "export=[gguf]", "export.gguf.outtype=q4_k_m"), tmp_path)
    assert result["status"] == "planned", result.get("error")
    d = tmp_path / "plan" / "export-gguf"
    spec = json.loads((d / "gguf.json").read_text())
    assert spec["outtype"] == "q4_k_m" and spec["ftype"] == 15 and spec["out"] == "artifacts/gguf/model-q4_k_m.gguf"
    assert spec["merge"]["adapter"] == "artifacts/adapter" and spec["merged"] == "artifacts/merged"
    assert spec["tolerance"] == 1.0 and spec["prompt"]["messages"][-1]["role"] == "user"
    for name in ("gguf_worker.py", "merged_worker.py", "hfglue.py", "runproto.py", "llama.cpp/convert_hf_to_gguf.py",
                 "llama.cpp/conversion/base.py", "llama.cpp/gguf-py/gguf/gguf_reader.py", "run.sh"):
        assert (d / name).is_file(), name
    assert json.loads((d / "command.json").read_text())["command"][1:] == [
        "plan/export-gguf/gguf_worker.py", "plan/export-gguf/gguf.json"]


def test_quantisation_table_is_llama_cpps():
    header = (llamacpp.converter() / "include" / "llama.h").read_text()
    ftypes = {m.group(1).lower(): int(m.group(2))
              for m in re.finditer(r"^\s*LLAMA_FTYPE_MOSTLY_(\w+)\s*=\s*(\d+)", header, re.M)}
    assert {q: ftypes[q] for q in llamacpp.QUANT_TYPES} == llamacpp.QUANT_TYPES
    assert set(llamacpp.NEEDS_IMATRIX) <= set(ftypes) and not set(llamacpp.NEEDS_IMATRIX) & set(llamacpp.outtypes())


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    d = tmp_path_factory.mktemp("plan")
    for src, name in (("plugins/gguf/worker.py", "gguf_worker.py"), ("plugins/merged/worker.py", "merged_worker.py"),
                      ("plugins/hftrainer/glue.py", "hfglue.py"), ("core/runproto.py", None),
                      ("core/lossmask.py", None)):
        shutil.copy(ROOT / src, d / (name or Path(src).name))
    spec = importlib.util.spec_from_file_location("gguf_worker", d / "gguf_worker.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    sys.path.remove(str(d))


def test_byte_level_gpt2_detection(worker, tmp_path):
    assert worker.byte_level_gpt2(ROOT / "core/assets/tiny-llama")  # the tiny tokenizer: GPT-2's split
    tok = json.loads((ROOT / "core/assets/tiny-llama/tokenizer.json").read_text())
    for change in ({"pre_tokenizer": {**tok["pre_tokenizer"], "add_prefix_space": True}},
                   {"pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}},
                   {"normalizer": {"type": "NFC"}}):
        d = tmp_path / str(len(list(tmp_path.iterdir())))
        d.mkdir()
        (d / "tokenizer.json").write_text(json.dumps({**tok, **change}))
        assert not worker.byte_level_gpt2(d), change


# -- through llama.cpp (slow, the exporter's environment) ---------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("gguf") / "run"
    result = runner.run(job("train.max_steps=4", "data.eval_fraction=0.25"), run_dir)
    assert result["status"] == "succeeded", result.get("error")
    return run_dir


def gguf_template(env, path: Path) -> str | None:
    """``tokenizer.chat_template`` read by the environment's own gguf reader (not the exporter's code)."""
    code = ("import sys, gguf; f = gguf.GGUFReader(sys.argv[1]).get_field('tokenizer.chat_template');"
            "sys.stdout.write(f.contents() if f else '')")
    conv = llamacpp.source_dir() / "gguf-py"
    out = subprocess.run([str(env.python), "-c", code, str(path)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(conv)}, check=True).stdout
    return out or None


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f16", "q8_0", "q4_k_m"])
def test_export_loads_in_llama_cpp(trained, outtype):
    env = gguf_env()
    p = subprocess.run([sys.executable, "-m", "core.after", str(trained), "export=[gguf,ollama]",
                        f"export.gguf.outtype={outtype}"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-4000:]
    out = trained / "artifacts" / "gguf"
    verify = json.loads((out / "verify.json").read_text())
    print(f"\n{outtype}: max logit diff {verify['max_logit_diff']:.3g}, argmax agree {verify['argmax_agree']:.3f}, "
          f"{verify['positions']} tokens, {verify['bytes']} bytes, types {verify['tensor_types']}")
    assert verify["tokens_equal"] and verify["tokens"]["llama.cpp"] == verify["tokens"]["transformers"]
    assert len(verify["tokens"]["transformers"]) > 20
    assert verify["max_logit_diff"] < BOUNDS[outtype], verify["max_logit_diff"]
    assert verify["max_logit_diff"] > 0  # a real comparison, not the same numbers twice
    assert verify["pre_tokenizer"]["written"] == "gpt-2"  # the tiny tokenizer is unknown to llama.cpp: mapped
    template = (trained / "data" / "chat_template.jinja").read_text()
    assert verify["chat_template_equal"] and gguf_template(env, out / f"model-{outtype}.gguf") == template
    if outtype != "f16":
        assert set(verify["tensor_types"]) - {"F32"}, verify["tensor_types"]
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./model-{outtype}.gguf\n") and 'PARAMETER stop "<|im_end|>"' in modelfile
    result = runproto.read_json(str(trained / "result.json"))
    assert result["artifacts"]["gguf"] == {"path": f"artifacts/gguf/model-{outtype}.gguf", "outtype": outtype}
    assert result["artifacts"]["ollama"]["path"] == "artifacts/gguf/Modelfile"
    assert (trained / "artifacts" / "merged" / "config.json").is_file()


@pytest.mark.slow
def test_a_verification_that_does_not_hold_fails_the_export(trained):
    """A tolerance no real export meets: the step fails with the measured difference, and leaves no GGUF."""
    gguf_env()
    p = subprocess.run([sys.executable, "-m", "core.after", str(trained), "export=[gguf]",
                        "export.gguf.outtype=f32", "export.gguf.max_logit_diff=1e-12"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1, p.stderr[-3000:]
    assert "largest logit difference" in p.stderr and "exceeds 1e-12" in p.stderr, p.stderr[-3000:]
    out = trained / "artifacts" / "gguf"
    assert not (out / "model-f32.gguf").exists() and not list(out.glob("*.partial"))
    verify = json.loads((out / "verify.json").read_text())
    assert verify["outtype"] == "f32" and verify["tokens_equal"] and 0 < verify["max_logit_diff"] < 1e-3
    steps = {s["name"]: s["status"] for s in runproto.read_json(str(trained / "result.json"))["steps"]}
    assert steps["gguf"] == "failed"


@pytest.mark.slow
def test_a_wrong_pre_tokenizer_mapping_fails_on_token_ids(tmp_path):
    """A tokenizer that lower-cases text first (a normaliser llama.cpp's gpt-2 pre-tokenizer does not have), declared
    gpt-2 by hand: llama.cpp tokenises the prompt differently from transformers, and the export fails on the token
    ids (and leaves no GGUF)."""
    gguf_env()
    base = tmp_path / "base"
    shutil.copytree(ROOT / "core/assets/tiny-llama", base)
    tok = json.loads((base / "tokenizer.json").read_text())
    tok["normalizer"] = {"type": "Lowercase"}
    (base / "tokenizer.json").write_text(json.dumps(tok))
    run_dir = tmp_path / "run"
    result = runner.run(job(f"model.name_or_path={base}", "train.max_steps=1", "export=[gguf]",
                            "export.gguf.ggml_pre=gpt-2"), run_dir)
    assert result["status"] == "failed", result
    assert "tokenises the prompt differently" in result["error"], result["error"][-2000:]
    verify = json.loads((run_dir / "artifacts/gguf/verify.json").read_text())
    assert not verify["tokens_equal"] and verify["pre_tokenizer"]["written"] == "gpt-2"
    assert verify["tokens"]["llama.cpp"] != verify["tokens"]["transformers"]
    assert not list((run_dir / "artifacts/gguf").glob("*.gguf*"))


@pytest.mark.slow
def test_quantisation_ids_match_the_installed_llama_cpp():
    env = gguf_env()
    if not env.exists():
        envs.ensure(env)
    code = "import json, llama_cpp; print(json.dumps({n: getattr(llama_cpp, 'LLAMA_FTYPE_MOSTLY_' + n.upper()) " \
           "for n in json.loads(input())}))"
    out = subprocess.run([str(env.python), "-c", code], input=json.dumps(list(llamacpp.QUANT_TYPES)),
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == llamacpp.QUANT_TYPES


@pytest.mark.slow
def test_sweep_trl_and_torchtune_with_gguf_heldout_gsm8k(tmp_path):
    """``-m backend=trl,torchtune export=[gguf] eval=[heldout,gsm8k]`` end to end on CPU."""
    gguf_env()
    if "torchtune" not in plugins.registry().backends:
        pytest.skip("the torchtune backend is not installed")
    keys = {"data.eval_fraction", "train.max_steps"}
    args = [o for o in SMALL if o.split("=", 1)[0] not in keys]
    p = subprocess.run([sys.executable, "-m", "core", "-m", "backend=trl,torchtune", "export=[gguf]",
                        "eval=[heldout,gsm8k]", "eval.gsm8k.max_rows=4", "eval.gsm8k.max_generated=16",
                        "data.eval_fraction=0.25", "train.max_steps=4", *args,
                        f"hydra.sweep.dir={tmp_path}"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-4000:]
    runs = sorted(d for d in tmp_path.iterdir() if (d / "result.json").is_file())
    assert [runproto.read_json(str(d / "result.json"))["backend"] for d in runs] == ["trl", "torchtune"]
    for d in runs:
        result = runproto.read_json(str(d / "result.json"))
        assert result["status"] == "succeeded", result.get("error")
        assert [s["name"] for s in result["steps"]][1:] == ["gguf", "heldout", "gsm8k"]
        verify = json.loads((d / "artifacts/gguf/verify.json").read_text())
        assert verify["tokens_equal"] and verify["max_logit_diff"] < BOUNDS["f16"]
        evals = runproto.read_json(str(d / "eval.json"))
        assert set(evals) == {"heldout", "gsm8k"} and all(scores.check(s) == [] for s in evals.values())
        assert evals["gsm8k"]["exact_match"]["n"] == 4
