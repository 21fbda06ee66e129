"""The Unsloth backend up to the engine call (CPU, CI): capability refusals and the no-GPU message, the
translation into ``FastLanguageModel`` and TRL arguments, the environment spec, and the worker's argument
handling. The engine itself runs only on an NVIDIA GPU: its jobs are the conformance suite's
``TestUnsloth`` and the GPU tests at the end of this file, run on the lent GPU (``bench/gpu_unsloth.sh``).

CI does not create Unsloth's environment: it is 2.9 GB and 1.5 min with a warm pip cache on a 2-core
machine, and on a CPU-only machine it cannot even import (PyPI's torchvision is a CUDA build, which
Unsloth refuses beside a CPU torch), so nothing past the plan could run there.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import checks, envs, plugins, runner
from core.conformance import compose
from core.errors import ConfigError, UnreadField, UnsupportedFeature
from plugins.unsloth import translate
from plugins.unsloth.backend import UnslothBackend

ROOT = Path(__file__).resolve().parents[1]
GPU = pytest.mark.skipif(not checks.cuda_present(), reason="Unsloth runs only on an NVIDIA GPU (bench/gpu_unsloth.sh)")


@pytest.fixture
def gpu(monkeypatch):
    """Validation as on a machine with an NVIDIA GPU."""
    monkeypatch.setattr(checks, "cuda_present", lambda: True)


@pytest.fixture
def no_gpu(monkeypatch):
    """Validation as on a machine without one."""
    monkeypatch.setattr(checks, "cuda_present", lambda: False)


def job(*overrides: str):
    return compose(["backend=unsloth", "offline=true", *overrides])


def check(*overrides: str):
    return runner.check(job(*overrides), plugins.registry())


def plan(tmp_path: Path, *overrides: str) -> dict:
    """``plan/unsloth_args.json`` of a planned job (plan_only: nothing runs)."""
    result = runner.run(job("plan_only=true", "train.device=cuda", *overrides), tmp_path / "run")
    assert result["status"] == "planned", result.get("error")
    return json.loads((tmp_path / "run" / "plan" / "unsloth_args.json").read_text())


# -- registration, environment ------------------------------------------------------------------------

def test_registered_first_party_with_its_own_environment():
    reg = plugins.registry()
    assert reg.backends["unsloth"] is UnslothBackend and reg.sources["backend/unsloth"] == "anytune"
    assert "not released" not in plugins.FIRST_PARTY["unsloth"]
    pins = dict(r.split("==") for r in UnslothBackend.environment)
    # Unsloth 2026.10.9's own bounds: transformers <= 5.17.0, trl <= 1.15.0, datasets < 5
    assert pins["unsloth"] == pins["unsloth_zoo"] == "2026.10.9"
    assert (pins["transformers"], pins["trl"], pins["datasets"]) == ("5.17.0", "1.15.0", "4.8.5")
    assert all("==" in r for r in UnslothBackend.environment), "every pin exact"
    env = envs.of(UnslothBackend)
    assert env.path.name.startswith("unsloth-") and env.path.parent == envs.home()
    assert list(env.requirements) == UnslothBackend.environment


# -- validation ---------------------------------------------------------------------------------------

def test_no_gpu_is_said_before_anything_loads_naming_the_backends_that_run_here(no_gpu):
    with pytest.raises(UnsupportedFeature, match=r"train.device=cpu \(this machine has no NVIDIA GPU") as e:
        check()  # auto resolves to cpu here
    assert {"trl", "torchtune"} <= set(e.value.able) and "unsloth" not in e.value.able
    with pytest.raises(ConfigError, match="needs an NVIDIA GPU .* and this machine has none; the ones that run "
                                          "here, on its CPU: .*trl") as e:
        check("train.device=cuda")
    assert "torchtune" in str(e.value) and "plan_only=true" in str(e.value)


def test_plan_only_writes_the_plan_without_a_gpu(tmp_path, no_gpu):
    spec = plan(tmp_path)
    assert spec["method"] == "sft" and (tmp_path / "run" / "plan" / "unsloth_worker.py").is_file()
    command = json.loads((tmp_path / "run" / "plan" / "command.json").read_text())
    assert command["command"][1:] == ["plan/unsloth_worker.py", "plan/unsloth_args.json"]
    assert command["env"]["UNSLOTH_DISABLE_STATISTICS"] == "1"  # no statistics call to the hub
    run_sh = (tmp_path / "run" / "plan" / "run.sh").read_text()
    assert "UNSLOTH_DISABLE_STATISTICS=1" in run_sh and "UNSLOTH_LLAMA_CPP_OFFLINE=1" in run_sh
    for shipped in ("runproto.py", "lossmask.py", "hfglue.py"):
        assert (tmp_path / "run" / "plan" / shipped).is_file()


@pytest.mark.parametrize("overrides,field", [
    (["train.device=cuda", "train.precision=fp32"], "train.precision"),
    (["train.device=cuda", "model.dtype=float32", "train.precision=bf16"], "model.dtype"),
    (["train.device=cuda", "model.trust_remote_code=true"], "model.trust_remote_code"),
])
def test_refuses_what_its_table_lacks(gpu, overrides, field):
    with pytest.raises(UnsupportedFeature) as e:
        check(*overrides)
    assert e.value.field == field and "trl" in e.value.able


@pytest.mark.parametrize("overrides,match", [
    (["peft.target_modules=[c_attn]"], r"Unsloth adapts only .*\['c_attn'\]"),
    (["model.dtype=float16", "train.precision=bf16"], "loads the weights in the dtype it computes in"),
])
def test_check_refuses_what_no_table_can_say(gpu, overrides, match):
    with pytest.raises(ConfigError, match=match):
        check("train.device=cuda", *overrides)


def test_accepts_every_method_and_adapter_on_a_gpu(gpu):
    for overrides in (["peft=lora"], ["peft=dora"], ["peft=qlora"], ["peft=none"], ["method.packing=true"],
                      ["method=dpo", "data=demo_pref"], ["method=orpo", "data=demo_pref"],
                      ["train.gradient_checkpointing=true"], ["train.precision=fp16"],
                      ["peft.target_modules=[q_proj,v_proj]"]):
        check("train.device=cuda", *overrides)


# -- translation --------------------------------------------------------------------------------------

@pytest.mark.parametrize("peft,four_bit,full,dora", [("lora", False, False, False), ("dora", False, False, True),
                                                     ("qlora", True, False, False), ("none", False, True, None)])
def test_load_in_4bit_comes_from_peft_type_never_from_unsloths_default(tmp_path, peft, four_bit, full, dora):
    spec = plan(tmp_path, f"peft={peft}")
    m = spec["model"]
    assert m["load_in_4bit"] is four_bit and m["load_in_8bit"] is False and m["full_finetuning"] is full
    assert m["dtype"] == "bfloat16" and m["fix_tokenizer"] is False and m["trust_remote_code"] is False
    if dora is None:
        assert spec["peft"] is None
    else:
        assert spec["peft"]["use_dora"] is dora


def test_lora_fields_and_seed_reach_get_peft_model(tmp_path):
    spec = plan(tmp_path, "peft=lora", "peft.r=8", "peft.alpha=16", "peft.dropout=0.1",
                "peft.target_modules=[q_proj,k_proj]", "train.seed=7")
    p = spec["peft"]
    assert (p["r"], p["lora_alpha"], p["lora_dropout"], p["target_modules"]) == (8, 16, 0.1, ["q_proj", "k_proj"])
    assert p["bias"] == "none" and p["use_rslora"] is False and p["random_state"] == 7
    assert spec["model"]["random_state"] == 7 and spec["args"]["seed"] == 7
    assert plan(tmp_path / "b", "peft=lora")["peft"]["target_modules"] == "all-linear"


@pytest.mark.parametrize("on,mode", [(True, "unsloth"), (False, False)])
def test_gradient_checkpointing_is_unsloths_own_mode(tmp_path, on, mode):
    spec = plan(tmp_path, f"train.gradient_checkpointing={str(on).lower()}")
    assert spec["model"]["use_gradient_checkpointing"] == mode and spec["peft"]["use_gradient_checkpointing"] == mode
    assert spec["args"]["activation_checkpointing"] is False  # the Trainer's own would wrap Unsloth's twice


def test_trl_arguments_are_trls_translation(tmp_path):
    sft = plan(tmp_path / "sft", "method.packing=true", "train.batch_size=3", "train.max_length=256",
               "train.precision=fp16", "train.shuffle=false")
    a = sft["args"]
    assert (a["packing"], a["per_device_train_batch_size"], a["max_length"]) == (True, 3, 256)
    assert (a["fp16"], a["bf16"], a["train_sampling_strategy"]) == (True, False, "sequential")
    assert sft["model"]["dtype"] == "float16" and sft["model"]["max_seq_length"] == 256
    dpo = plan(tmp_path / "dpo", "method=dpo", "data=demo_pref", "method.beta=0.2", "method.loss_type=ipo")
    assert (dpo["method"], dpo["kind"], dpo["args"]["beta"], dpo["args"]["loss_type"]) == ("dpo", "preference", 0.2,
                                                                                         ["ipo"])
    orpo = plan(tmp_path / "orpo", "method=orpo", "data=demo_pref")
    assert orpo["method"] == "orpo" and orpo["args"]["disable_dropout"] is False


def test_native_keys_go_last(tmp_path):
    spec = plan(tmp_path, "+backend.native.activation_checkpointing=true", "+backend.native.warmup_steps=3")
    assert spec["args"]["activation_checkpointing"] is True and spec["args"]["warmup_steps"] == 3


# -- the worker, up to the engine ----------------------------------------------------------------------

def run_worker(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "plan/unsloth_worker.py", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def test_worker_refuses_wrong_arguments_before_importing_anything(tmp_path):
    plan(tmp_path)
    run_dir = tmp_path / "run"
    for args, match in [((), "got 0 arguments"), (("a", "b"), "got 2 arguments"),
                        (("plan/missing.json",), "cannot read plan/missing.json"),
                        (("data/stats.json",), "is not an Unsloth plan")]:
        proc = run_worker(run_dir, *args)
        assert proc.returncode == 2, proc.stderr
        assert match in proc.stderr, proc.stderr
    assert not (run_dir / "logs" / "train.outcome.json").exists() and not (run_dir / "outcome.json").exists()


def test_worker_reads_its_plan_and_goes_offline_and_quiet(tmp_path):
    plan(tmp_path, "peft=qlora")
    sys.path.insert(0, str(tmp_path / "run" / "plan"))
    try:
        import importlib

        worker = importlib.import_module("unsloth_worker")
        importlib.reload(worker)
        os.chdir(tmp_path / "run")
        spec = worker.read_spec(["w", "plan/unsloth_args.json"])
        env: dict = {"UNSLOTH_DISABLE_STATISTICS": "0"}
        worker.quiet(spec, env)
        assert env["HF_HUB_OFFLINE"] == "1" and env["UNSLOTH_LLAMA_CPP_OFFLINE"] == "1"
        assert env["UNSLOTH_DISABLE_STATISTICS"] == "0", "a value the user set is kept"
        assert "unsloth" not in sys.modules, "reading the plan imports no engine"
    finally:
        sys.path.remove(str(tmp_path / "run" / "plan"))
        sys.modules.pop("unsloth_worker", None)
        os.chdir(ROOT)


def test_translation_imports_no_engine():
    code = "import plugins.unsloth, sys; print([m for m in ('torch','transformers','trl','unsloth') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_translate_targets_are_unsloths_accepted_modules():
    assert translate.LORA_TARGETS >= {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


# -- on the GPU (bench/gpu_unsloth.sh runs these with the conformance suite's TestUnsloth) ---------------

def nf4_trainable(out: Path) -> Path:
    """The shipped tiny Llama's tokenizer and config at 128 wide, 4 heads (every linear weight quantisable to
    NF4), with random weights of that width: the suite's ``nf4_model`` asset has the 64-wide weights (it is
    for validation, which reads no weights), so 4-bit training on it fails with a shape mismatch."""
    import shutil

    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    shutil.copytree(ROOT / "core" / "assets" / "tiny-llama", out)
    config = AutoConfig.from_pretrained(out)
    config.update(dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=4,
                       head_dim=32))
    torch.manual_seed(0)
    for f in out.glob("*.safetensors"):
        f.unlink()
    LlamaForCausalLM(config).save_pretrained(out)
    return out


@GPU
@pytest.mark.slow
@pytest.mark.parametrize("peft", ["qlora", "none"])
def test_gpu_qlora_and_full_fine_tune_train_and_save(peft, tmp_path):
    """QLoRA (4-bit base, set by anytune, not by Unsloth's default) and a full fine-tune: the loss falls, the
    trainable parameters are the reference setup's, and the saved artefact is what the layout says."""
    from core.conformance import SMALL
    from core.conformance import reference as ref
    from core.conformance.suite import train

    model = str(nf4_trainable(tmp_path / "nf4")) if peft == "qlora" else str(ROOT / "core" / "assets" / "tiny-llama")
    run = train("unsloth", [*SMALL, f"model.name_or_path={model}", f"peft={peft}", "train.shuffle=false",
                            "train.learning_rate=1e-3" if peft == "none" else "train.learning_rate=5e-3"],
                tmp_path / "run")
    losses = run.losses
    assert len(losses) == 8 and sum(losses[-2:]) < sum(losses[:2]), losses
    assert run.result["trainable_parameters"] == ref.trainable_parameters(model, run.cfg.peft)
    kind = "adapter" if peft == "qlora" else "model"
    assert (run.run_dir / run.result["artifacts"][kind]["path"]).is_dir()
    if peft == "qlora":  # the adapter of a 4-bit base: peft's own config, never merged weights
        config = json.loads((run.run_dir / "artifacts" / "adapter" / "adapter_config.json").read_text())
        assert config["r"] == 16 and not (run.run_dir / "artifacts" / "adapter" / "model.safetensors").exists()
    stderr = (run.run_dir / "logs" / "train.stderr.log").read_text()
    assert "anytune: Unsloth" in stderr and "gradient checkpointing False" in stderr


@GPU
@pytest.mark.slow
def test_gpu_parity_with_trl_from_the_same_weights_and_batches(tmp_path, anytune_trained_model, request):
    """The same SFT LoRA job (rows in order, bf16 on CUDA) on TRL and on Unsloth: equal trainable parameters
    and, at every one of 10 steps, losses within the suite's bf16 tolerance."""
    from core.conformance.reference import records_of_kind, write_jsonl
    from core.conformance.suite import GPU_TOLERANCE, max_diff, record, train

    data = write_jsonl(tmp_path / "rows.jsonl", records_of_kind("messages", 20))
    job = ["offline=true", "train.device=cuda", "train.precision=bf16", "data.eval_fraction=0", "train.shuffle=false",
           f"model.name_or_path={anytune_trained_model}", f"data.train={data}", "peft=lora", "train.batch_size=2",
           "train.max_steps=10", "train.learning_rate=1e-4", "train.max_length=512", "train.save_artifacts=false"]
    trl = train("trl", job, tmp_path / "trl")
    us = train("unsloth", job, tmp_path / "unsloth")
    record(request, "max_abs_diff", max_diff(us.losses, trl.losses))
    record(request, "losses", {"trl": trl.losses, "unsloth": us.losses})
    assert us.result["trainable_parameters"] == trl.result["trainable_parameters"]
    assert us.losses == pytest.approx(trl.losses, abs=GPU_TOLERANCE, rel=0), (us.losses, trl.losses)


# -- the engine's own configuration, where an Unsloth interpreter exists (not in CI) ----------------------

def unsloth_python() -> str | None:
    """The interpreter the backend would run (its managed environment, or $ANYTUNE_PYTHON_UNSLOTH) if it has
    Unsloth; None otherwise (CI does not create the environment: see the module docstring)."""
    python = UnslothBackend(job()).python()
    return python if Path(python).exists() and envs.distribution_version(python, "unsloth") else None


READ_BACK = r'''
import json, os, sys
sys.path.insert(0, "plan")
import unsloth_worker as w
spec = w.read_spec(["w", "plan/unsloth_args.json"])
spec["args"].update(bf16=False, fp16=False, use_cpu=True)  # transformers refuses bf16/fp16 without a GPU
s = w.settings(spec)
a = s["args"]
names = ("per_device_train_batch_size", "learning_rate", "max_length", "seed", "packing", "beta", "loss_type",
         "gradient_checkpointing", "completion_only_loss", "train_sampling_strategy", "disable_dropout",
         "gradient_accumulation_steps", "optim", "lr_scheduler_type", "max_steps")
print(json.dumps({"config": type(a).__name__, "trainer": s["trainer_class"].__name__,
                  "template": s["tokenizer"].chat_template == open("data/chat_template.jinja").read(),
                  **{n: str(getattr(a, n)) if hasattr(a, n) else None for n in names}}))
'''


@pytest.mark.slow
@pytest.mark.skipif(unsloth_python() is None, reason="no Unsloth interpreter here (python -m core.envs create unsloth)")
def test_unsloths_trl_builds_the_plans_configs(tmp_path):
    """The worker's ``settings()`` in Unsloth's own interpreter (``import unsloth`` first, its TRL 1.15 and
    transformers 5.17; ``UNSLOTH_ALLOW_CPU=1``, so no GPU and Unsloth leaves TRL's classes unpatched) builds
    each method's TRL config with the job's values. Needs Unsloth's environment to import on CPU, which on a
    CPU-only machine takes removing its CUDA torchvision (docs/unsloth.md)."""
    jobs = {"sft": ["method.packing=true", "train.batch_size=3", "train.learning_rate=3e-4", "train.max_length=256",
                    "train.seed=7", "train.gradient_checkpointing=true", "train.shuffle=false", "train.max_steps=5"],
            "dpo": ["method=dpo", "data=demo_pref", "method.beta=0.2", "method.loss_type=ipo", "train.max_steps=5"],
            "orpo": ["method=orpo", "data=demo_pref", "method.beta=0.3", "train.max_steps=5"]}
    got = {}
    for method, overrides in jobs.items():
        plan(tmp_path / method, *overrides)
        proc = subprocess.run([unsloth_python(), "-c", READ_BACK], cwd=tmp_path / method / "run", capture_output=True,
                              text=True, timeout=300, env={**os.environ, "UNSLOTH_ALLOW_CPU": "1",
                                                           "UNSLOTH_DISABLE_STATISTICS": "1", "HF_HUB_OFFLINE": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        got[method] = json.loads(proc.stdout.strip().splitlines()[-1])
    sft, dpo, orpo = got["sft"], got["dpo"], got["orpo"]
    assert (sft["config"], sft["trainer"], sft["template"]) == ("SFTConfig", "SFTTrainer", True)
    assert (sft["per_device_train_batch_size"], sft["learning_rate"], sft["max_length"], sft["seed"]) == (
        "3", "0.0003", "256", "7")
    assert (sft["packing"], sft["completion_only_loss"], sft["max_steps"]) == ("True", "True", "5")
    assert sft["gradient_checkpointing"] == "False", "Unsloth checkpoints itself; the Trainer's stays off"
    assert sft["train_sampling_strategy"] == "sequential"
    assert (dpo["config"], dpo["trainer"], dpo["beta"], dpo["loss_type"]) == ("DPOConfig", "DPOTrainer", "0.2",
                                                                             "['ipo']")
    assert (orpo["config"], orpo["trainer"], orpo["beta"], orpo["disable_dropout"]) == ("ORPOConfig", "ORPOTrainer",
                                                                                       "0.3", "False")
