"""The torchtune backend: translation into recipe configs (fast, main venv), and real ``tune run``
jobs in the managed environment (slow): the conformance suite, adapter round trips, an ejected plan.

The main venv never gets torchtune (peft 0.21 refuses LoRA beside torchao < 0.16):
the engine runs in ``python -m core.envs create torchtune``'s environment, created
here once per session when missing.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import plugins.torchtune as tt_plugin
from core import envs, lossmask, plugins, runner, runproto
from core.conformance import SMALL, BackendConformance, compose, generates, load_artifact
from core.data import chat_template as template
from core.errors import ConfigError
from plugins.torchtune import translate
from plugins.torchtune.backend import TorchtuneBackend

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "core" / "assets" / "tiny-llama"
PLAN_FILE = f"plan/{translate.PLAN_FILE}"


@pytest.fixture(scope="module", autouse=True)
def registry():
    """The torchtune backend registered (through the entry point if installed, else as an extra plugin)."""
    reg = plugins.registry()
    added = "torchtune" not in reg.backends
    if added:
        reg = plugins.reset(extra=[tt_plugin])
    yield reg
    if added:  # leave the registry as other test modules expect it
        plugins.reset()


@pytest.fixture(scope="session")
def tiny() -> Path:
    """The shipped tiny Llama (tied embeddings, ChatML), built if the asset is missing."""
    if (TINY / "config.json").is_file():
        return TINY
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import build_tiny_model

    out = ROOT / ".pytest_cache" / "tiny-llama"
    if not (out / "config.json").is_file():
        build_tiny_model(out)
    return out


def job(*overrides: str, tiny_path: Path | None = None):
    return compose(["backend=torchtune", *SMALL, *overrides]
                   + ([f"model.name_or_path={tiny_path}"] if tiny_path else []))


def plan_only(tmp_path: Path, *overrides: str, tiny_path: Path | None = None):
    """Plan a job (no engine needed) and return (result, run_dir, recipe config)."""
    run_dir = tmp_path / "run"
    result = runner.run(job("plan_only=true", *overrides, tiny_path=tiny_path), run_dir)
    config = None
    if (run_dir / PLAN_FILE).is_file():
        config = OmegaConf.to_container(OmegaConf.load(run_dir / PLAN_FILE))
    return result, run_dir, config


# -- translation (fast) -------------------------------------------------------------------------------


def test_plan_sft_lora(tmp_path, tiny):
    result, run_dir, cfg = plan_only(tmp_path, "method=sft", "peft=lora", "peft.r=8", "peft.alpha=16",
                                     "peft.dropout=0.05", "train.grad_accum=2", "train.lr_scheduler=cosine",
                                     "train.warmup_ratio=0.1", "train.gradient_checkpointing=true", "train.seed=7",
                                     tiny_path=tiny)
    assert result["status"] == "planned", result.get("error")
    command = json.loads((run_dir / "plan" / "command.json").read_text())["command"]
    assert command[1:] == ["-m", "torchtune._cli.tune", "run", "lora_finetune_single_device",
                           "--config", "plan/torchtune.yaml"]
    text = (run_dir / PLAN_FILE).read_text()
    assert text.startswith("# torchtune 0.6.1") and "tune run lora_finetune_single_device" in text
    hf = json.loads((tiny / "config.json").read_text())
    m = cfg["model"]
    assert m["_component_"] == "torchtune.models.llama3_2.lora_llama3_2"
    assert m["lora_attn_modules"] == ["q_proj", "k_proj", "v_proj", "output_proj"] and m["apply_lora_to_mlp"]
    assert (m["lora_rank"], m["lora_alpha"], m["lora_dropout"], m["use_dora"]) == (8, 16.0, 0.05, False)
    assert (m["embed_dim"], m["num_layers"], m["num_heads"], m["num_kv_heads"], m["vocab_size"]) == (
        hf["hidden_size"], hf["num_hidden_layers"], hf["num_attention_heads"], hf["num_key_value_heads"],
        hf["vocab_size"])
    assert m["tie_word_embeddings"] == hf["tie_word_embeddings"] and m["scale_factor"] == 1.0
    assert cfg["checkpointer"]["_component_"] == "torchtune.training.FullModelHFCheckpointer"
    assert cfg["checkpointer"]["checkpoint_dir"] == str(tiny.resolve())
    assert cfg["checkpointer"]["checkpoint_files"] == ["model.safetensors"]
    assert cfg["save_adapter_weights_only"] is True, "never merged weights beside an adapter"
    assert cfg["tokenizer"]["chat_template"] == "data/chat_template.jinja"
    assert cfg["dataset"] == {"_component_": "plan.anytune_torchtune.sft_dataset", "source": "data/train.jsonl",
                              "kind": "messages", "completion_only_loss": True, "steps": 8, "batch_size": 4,
                              "grad_accum": 2, "seed": 7, "shuffle": True, "start_step": 0}
    assert (cfg["batch_size"], cfg["gradient_accumulation_steps"], cfg["max_steps_per_epoch"]) == (4, 2, 8)
    assert (cfg["epochs"], cfg["shuffle"], cfg["seed"]) == (1, False, 7)
    assert cfg["optimizer"]["_component_"] == "plan.anytune_torchtune.AdamW"
    assert cfg["lr_scheduler"] == {"_component_": "plan.anytune_torchtune.lr_schedule", "name": "cosine",
                                   "warmup_ratio": 0.1, "start_step": 0}
    assert cfg["loss"]["_component_"] == "torchtune.modules.loss.CEWithChunkedOutputLoss"
    assert cfg["clip_grad_norm"] == 1.0 and cfg["enable_activation_checkpointing"] is True
    assert (cfg["device"], cfg["dtype"]) == ("cpu", "fp32")
    assert cfg["metric_logger"]["artifacts"] == "adapter" and cfg["metric_logger"]["max_steps"] == 8
    for name in ("anytune_torchtune.py", "runproto.py", "lossmask.py", "chatrender.py", "run.sh"):
        assert (run_dir / "plan" / name).is_file()
    assert result["plan"]["files"] == ["plan/torchtune.yaml", "plan/anytune_torchtune.py", "plan/runproto.py",
                                       "plan/lossmask.py", "plan/chatrender.py"]


def test_plan_full_and_native_keys(tmp_path, tiny):
    _, _, cfg = plan_only(tmp_path, "peft=none", "train.optimizer=sgd", "train.max_grad_norm=0",
                          "train.save_artifacts=false", "++backend.native.log_peak_memory_stats=true",
                          "++backend.native.optimizer.momentum=0.9", tiny_path=tiny)
    assert cfg["model"]["_component_"] == "torchtune.models.llama3_2.llama3_2"
    assert "lora_rank" not in cfg["model"] and "save_adapter_weights_only" not in cfg
    assert cfg["optimizer_in_bwd"] is False and cfg["clip_grad_norm"] is None
    assert cfg["optimizer"] == {"_component_": "plan.anytune_torchtune.SGD", "lr": 5e-3, "weight_decay": 0.0,
                                "momentum": 0.9, "save_steps": 0, "resume": None, "start_step": 0}
    assert cfg["log_peak_memory_stats"] is True, "backend.native is merged last"
    assert cfg["metric_logger"]["artifacts"] == "none"


def test_plan_cuda_bf16(tmp_path, tiny):
    """The plan run on an H100 (docs/torchtune.md): only device and dtype change."""
    _, _, cfg = plan_only(tmp_path, "train.device=cuda", "train.precision=bf16", tiny_path=tiny)
    assert (cfg["device"], cfg["dtype"]) == ("cuda", "bf16")


def test_plan_qlora(tmp_path, tiny):
    """peft=qlora: the LoRA builder with quantize_base (torchao NF4 base); CUDA only, as TRL's QLoRA."""
    result, _, _ = plan_only(tmp_path / "tiny", "peft=qlora", "train.device=cuda", tiny_path=tiny)
    assert result["status"] == "failed" and result["error_type"] == "ConfigError"
    assert "q_proj 64x64" in result["error"], "the 64-wide tiny model is too small for NF4's blocks"
    model = tmp_path / "nf4-able"  # 128 wide, 4 kv heads: every base weight a multiple of 64 x 256 values
    shutil.copytree(tiny, model)
    hf = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**hf, "hidden_size": 128, "head_dim": 32, "num_key_value_heads": 4,
                                                   "intermediate_size": 256}))
    assert translate.nf4_problems(json.loads((model / "config.json").read_text())) == []
    result, _, cfg = plan_only(tmp_path, "peft=qlora", "train.device=cuda", "train.precision=bf16", tiny_path=model)
    assert result["status"] == "planned", result.get("error")
    m = cfg["model"]
    assert m["_component_"] == "torchtune.models.llama3_2.lora_llama3_2" and m["quantize_base"] is True
    assert (m["lora_rank"], m["lora_alpha"], m["use_dora"]) == (16, 32.0, False)
    assert cfg["save_adapter_weights_only"] is True and cfg["metric_logger"]["artifacts"] == "adapter"
    _, _, lora = plan_only(tmp_path / "lora", "peft=lora", "train.device=cuda", tiny_path=tiny)
    assert "quantize_base" not in lora["model"]
    result, _, _ = plan_only(tmp_path / "cpu", "peft=qlora", tiny_path=model)
    assert result["status"] == "failed" and result["error_type"] == "UnsupportedFeature"
    assert "train.device=cuda" in result["error"]


def test_plan_dpo(tmp_path, tiny):
    result, run_dir, cfg = plan_only(tmp_path, "method=dpo", "data=demo_pref", "peft=lora", "data.max_rows=16",
                                     "method.beta=0.25", tiny_path=tiny)
    assert result["status"] == "planned", result.get("error")
    assert json.loads((run_dir / "plan" / "command.json").read_text())["command"][4] == "lora_dpo_single_device"
    assert cfg["loss"] == {"_component_": "torchtune.rlhf.loss.DPOLoss", "beta": 0.25}
    assert cfg["dataset"]["_component_"] == "plan.anytune_torchtune.preference_dataset"
    assert (cfg["dataset"]["steps"], cfg["dataset"]["batch_size"]) == (8, 4), "16 rows, batch 4, 8 steps"
    assert cfg["optimizer"]["max_grad_norm"] == 1.0, "the DPO recipe does not clip; the optimiser does"
    assert "clip_grad_norm" not in cfg
    _, _, cfg = plan_only(tmp_path / "hinge", "method=dpo", "data=demo_pref", "method.loss_type=hinge",
                          tiny_path=tiny)
    assert cfg["loss"] == {"_component_": "torchtune.rlhf.loss.RSOLoss", "gamma": 0.1}


@pytest.mark.parametrize("overrides, error_type, words", [
    (["method=dpo", "data=demo_pref", "peft=none"], "ConfigError", "distributed-only"),
    (["method=dpo", "data=demo_pref", "peft=dora"], "ConfigError", "DoRA"),
    (["peft.target_modules=[q_proj,up_proj]"], "ConfigError", "apply_lora_to_mlp"),
    (["peft.target_modules=[q_proj,lm_head]"], "ConfigError", "ties it to the embeddings"),
    (["peft.target_modules=[qkv]"], "ConfigError", "all-linear"),
    (["model.dtype=bfloat16"], "ConfigError", "one dtype"),
    (["model.dtype=float16"], "UnsupportedFeature", "model.dtype=float16"),
    (["model.trust_remote_code=true"], "UnsupportedFeature", "model.trust_remote_code=True"),
    (["train.eval_steps=5"], "UnreadField", "train.eval_steps"),
    (["method=orpo", "data=demo_pref"], "UnsupportedFeature", "method.name=orpo"),
    (["method=dpo", "data=demo_pref", "method.packing=true"], "ConfigError", "applies to method.name=sft only"),
    (["data.eval_fraction=0.1"], "UnsupportedFeature", "data.eval=True"),
    (["method=dpo", "data=demo_pref", "method.loss_type=ipo"], "UnsupportedFeature", "ipo"),
])
def test_refused_before_data(tmp_path, tiny, overrides, error_type, words):
    result, run_dir, _ = plan_only(tmp_path, *overrides, tiny_path=tiny)
    assert result["status"] == "failed" and result["error_type"] == error_type, result
    assert words in result["error"]
    assert not (run_dir / "data").exists(), "refused at validation, before any data is written"


#: Every canonical field the backend declares it reads: (the job it is changed in, the change). Each must
#: change the recipe config (or, data.chat_template, the template of record the recipe's tokenizer loads).
BASES = {"sft": [], "dpo": ["method=dpo", "data=demo_pref", "data.max_rows=16"], "epochs": ["train.max_steps=-1"],
         "full": ["peft=none"], "two": ["peft=none", "train.devices=2"]}
READS = {
    "model.name_or_path": ("sft", []),  # a copy of the model elsewhere (below)
    "model.dtype": ("sft", ["model.dtype=float32"]),  # the precision's dtype: the same job (below)
    "data.chat_template": ("sft", ["data.chat_template=zephyr"]),
    "method.name": ("sft", ["method=dpo", "data=demo_pref", "data.max_rows=16"]),
    "method.completion_only_loss": ("sft", ["method.completion_only_loss=false"]),
    "method.packing": ("sft", ["method.packing=true"]),
    "method.beta": ("dpo", ["method.beta=0.3"]),
    "method.loss_type": ("dpo", ["method.loss_type=hinge"]),
    "peft.type": ("sft", ["peft=dora"]),
    "peft.r": ("sft", ["peft.r=8"]),
    "peft.alpha": ("sft", ["peft.alpha=8"]),
    "peft.dropout": ("sft", ["peft.dropout=0.1"]),
    "peft.target_modules": ("sft", ["peft.target_modules=[q_proj,v_proj]"]),
    "train.epochs": ("epochs", ["train.epochs=2"]),
    "train.max_steps": ("sft", ["train.max_steps=4"]),
    "train.batch_size": ("sft", ["train.batch_size=2"]),
    "train.grad_accum": ("sft", ["train.grad_accum=2"]),
    "train.learning_rate": ("sft", ["train.learning_rate=1e-3"]),
    "train.lr_scheduler": ("sft", ["train.lr_scheduler=cosine"]),
    "train.warmup_ratio": ("sft", ["train.warmup_ratio=0.1"]),
    "train.weight_decay": ("sft", ["train.weight_decay=0.01"]),
    "train.optimizer": ("sft", ["train.optimizer=sgd"]),
    "train.max_grad_norm": ("sft", ["train.max_grad_norm=0.5"]),
    "train.max_length": ("sft", ["train.max_length=256"]),
    "train.precision": ("sft", ["train.precision=bf16"]),
    "train.gradient_checkpointing": ("sft", ["train.gradient_checkpointing=true"]),
    "train.device": ("sft", ["train.device=cuda"]),
    "train.seed": ("sft", ["train.seed=7"]),
    "train.shuffle": ("sft", ["train.shuffle=false"]),
    "train.logging_steps": ("sft", ["train.logging_steps=2"]),
    "train.save_artifacts": ("sft", ["train.save_artifacts=false"]),
    "train.save_steps": ("sft", ["train.save_steps=2"]),
    "train.devices": ("full", ["train.devices=2"]),  # full_finetune_distributed, a batch per process
    "train.nodes": ("full", ["train.nodes=2"]),
    "train.strategy": ("two", ["train.strategy=fsdp"]),  # fsdp_reshard_after_forward
}


def test_reads_table_is_exact():
    """The table below covers exactly the fields the backend declares it reads (and it reads no others)."""
    assert set(READS) == set(TorchtuneBackend.capabilities.reads)
    assert "train.eval_steps" not in READS and "model.trust_remote_code" not in READS


@pytest.fixture(scope="module")
def base_plans(tmp_path_factory, tiny):
    """The recipe config and template of record of each base job of READS."""
    out = {}
    for name, overrides in BASES.items():
        result, run_dir, cfg = plan_only(tmp_path_factory.mktemp(name), *overrides, tiny_path=tiny)
        assert result["status"] == "planned", result.get("error")
        out[name] = (cfg, (run_dir / "data" / "chat_template.jinja").read_text())
    return out


@pytest.mark.parametrize("field", list(READS))
def test_every_field_read_arrives_in_the_recipe(tmp_path, tiny, base_plans, field):
    """Changing a field the backend reads changes what torchtune runs: nothing declared read is ignored."""
    base, overrides = READS[field]
    model = tiny
    if field == "model.name_or_path":
        model = tmp_path / "elsewhere"
        shutil.copytree(tiny, model)
    result, run_dir, cfg = plan_only(tmp_path, *BASES[base], *overrides, tiny_path=model)
    assert result["status"] == "planned", result.get("error")
    before_cfg, before_template = base_plans[base]
    if field == "model.dtype":  # accepted only as the training precision's dtype, which the recipe's dtype is
        assert cfg == before_cfg and cfg["dtype"] == "fp32"
        return
    after = (cfg, (run_dir / "data" / "chat_template.jinja").read_text())
    assert after != (before_cfg, before_template), f"{field} changed nothing torchtune reads"
    if field == "data.chat_template":
        assert cfg["tokenizer"]["chat_template"] == "data/chat_template.jinja"


def test_unknown_architecture_names_supported_families(tmp_path, tiny):
    model = tmp_path / "qwen"
    shutil.copytree(tiny, model)
    hf = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**hf, "architectures": ["Qwen2ForCausalLM"]}))
    result, _, _ = plan_only(tmp_path, tiny_path=model)
    assert result["error_type"] == "ConfigError"
    assert "Qwen2ForCausalLM" in result["error"] and "LlamaForCausalLM" in result["error"]


def test_rope_variants():
    assert translate.rope({"rope_parameters": {"rope_theta": 5e5, "rope_type": "default"}}) == (5e5, 1.0)
    assert translate.rope({"rope_theta": 1e4}) == (1e4, 1.0)
    llama31 = {"rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                   "high_freq_factor": 4.0,
                                                   "original_max_position_embeddings": 8192}}
    assert translate.rope(llama31) == (5e5, 8.0)
    with pytest.raises(ConfigError, match="yarn"):
        translate.rope({"rope_scaling": {"type": "yarn", "factor": 4}})
    odd = {"rope_parameters": {**llama31["rope_scaling"], "rope_theta": 5e5, "high_freq_factor": 2.0}}
    with pytest.raises(ConfigError, match="Llama3ScaledRoPE"):
        translate.rope(odd)


def test_model_args_refuse_what_the_builder_lacks(tiny):
    hf = json.loads((tiny / "config.json").read_text())
    for bad in ({"attention_bias": True}, {"hidden_act": "gelu"}, {"head_dim": 32}):
        with pytest.raises(ConfigError):
            translate.model_args({**hf, **bad}, 128)


def test_steps_and_passes():
    assert translate.total_steps(32, 4, 1, 8, 1) == (8, 1)
    assert translate.total_steps(16, 4, 1, 8, 1) == (8, 2)
    assert translate.total_steps(10, 4, 1, 5, 1) == (5, 2), "passes are joined, then cut into batches"
    assert translate.total_steps(30, 4, 2, -1, 1) == (4, 2), "HF counts ceil(ceil(30/4)/2) = 4 per epoch"
    assert translate.total_steps(30, 4, 1, -1, 0.5) == (4, 1)
    with pytest.raises(ConfigError, match="fewer than train.batch_size"):
        translate.total_steps(3, 4, 1, 8, 1)


def test_missing_engine_prints_the_create_command(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("ANYTUNE_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv(envs.CREATE_VARIABLE, "0")  # not created on first use
    if envs.has_distribution(sys.executable, "torchtune"):
        pytest.skip("this interpreter has torchtune")
    result = runner.run(job(tiny_path=tiny), tmp_path / "run")
    assert result["status"] == "failed" and result["error_type"] == "EngineMissing"
    assert "python -m core.envs create torchtune" in result["error"]
    backend = TorchtuneBackend(job(tiny_path=tiny))
    with pytest.raises(envs.EngineMissing, match="python -m core.envs create torchtune"):
        envs.interpreter(backend)


# -- the shipped components, imported in the main venv (torch is here; torchtune is not needed) --------


@pytest.fixture(scope="module")
def components(tmp_path_factory, tiny):
    """plan/anytune_torchtune.py of a planned run, imported as the recipe imports it."""
    run_dir = tmp_path_factory.mktemp("components") / "run"
    result = runner.run(job("plan_only=true", tiny_path=tiny), run_dir)
    assert result["status"] == "planned", result.get("error")
    spec = importlib.util.spec_from_file_location("anytune_torchtune_under_test",
                                                  run_dir / "plan" / "anytune_torchtune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, run_dir


def hf_example(tok, kind, record, completion_only, max_length):
    """Tokens and mask as the conformance reference (plain transformers) makes them."""
    def render(messages, add_generation_prompt):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    text, spans = lossmask.loss_spans(kind, record, render, completion_only, eos=tok.eos_token or "")
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True, truncation=True, max_length=max_length)
    return enc["input_ids"], lossmask.mask_from_offsets(enc["offset_mapping"], spans)


def test_tokenizer_matches_transformers(components, tiny):
    from transformers import AutoTokenizer

    module, run_dir = components
    chat_template = run_dir / "data" / "chat_template.jinja"
    hf = AutoTokenizer.from_pretrained(tiny)
    hf.chat_template = chat_template.read_text()
    records = runproto.read_jsonl(str(run_dir / "data" / "train.jsonl"))[:6]
    for max_len in (512, 24):
        ours = module.ChatTemplateTokenizer(str(tiny), str(chat_template), max_len)
        for rec in records:
            assert ours.render(rec["messages"], False) == template.render(
                chat_template.read_text(), rec["messages"], False, template.special_tokens(str(tiny)))
            for completion_only in (True, False):
                assert list(ours.example("messages", rec, completion_only)) == list(
                    hf_example(hf, "messages", rec, completion_only, max_len))
        pc = {"prompt": "Two plus two is", "completion": " four."}
        assert list(ours.example("prompt_completion", pc)) == list(hf_example(hf, "prompt_completion", pc, True,
                                                                             max_len))
        assert list(ours.example("text", {"text": "plain text"})) == list(
            hf_example(hf, "text", {"text": "plain text"}, True, max_len))
    assert ours.pad_id == hf.pad_token_id and ours.eos_id == hf.eos_token_id


def test_preference_labels_cover_the_answer_only(components, tiny):
    module, run_dir = components
    tok = module.ChatTemplateTokenizer(str(tiny), str(run_dir / "data" / "chat_template.jinja"), 512)
    rec = {"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                      {"role": "user", "content": "Sum 2 and 2?"}],
           "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}]}
    out = tok.preference(rec)
    prompt_len = len(tok.encode(tok.render(rec["prompt"], True)))
    for side in ("chosen", "rejected"):
        ids, labels = out[f"{side}_input_ids"], out[f"{side}_labels"]
        assert all(x == -100 for x in labels[:prompt_len]), "the prompt, earlier answers included, has no loss"
        assert labels[prompt_len:] == ids[prompt_len:] and len(ids) > prompt_len


@pytest.mark.parametrize("name", ["linear", "cosine", "constant", "constant_with_warmup"])
def test_lr_schedule_matches_transformers(components, name):
    import torch
    from transformers import get_scheduler

    module, _ = components
    total, ratio = 20, 0.15

    def lrs(make):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make(opt)
        out = []
        for _ in range(total):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    ours = lrs(lambda o: module.lr_schedule(o, name, total, ratio))
    theirs = lrs(lambda o: get_scheduler(name, o, num_warmup_steps=3, num_training_steps=total))
    assert ours == pytest.approx(theirs)


# -- real runs in the managed environment (slow) ------------------------------------------------------


@pytest.fixture(scope="session")
def tt_env():
    """The torchtune environment (``python -m core.envs create torchtune``), created once if missing."""
    started = time.time()
    env = envs.create(TorchtuneBackend)
    print(f"\ntorchtune environment ready in {time.time() - started:.1f}s: {env.path}")
    return env


@pytest.mark.slow
class TestTorchtuneBeyondConformance:
    """The shared suite (tests/test_conformance.py) runs torchtune like every backend; this adds to it."""

    def test_parity_full(self, tt_env, tiny, tmp_path):
        """Step-1 parity for a full fine-tune too (the suite checks LoRA)."""
        from core.conformance import reference_loss, reference_trainable

        if tiny != TINY:
            pytest.skip("the conformance helpers compose model=tiny (core/assets/tiny-llama)")
        cfg, run_dir, result = BackendConformance().run_job("torchtune", ["method=sft", "peft=none", "data.max_rows=8",
                                                      "train.batch_size=8", "train.max_steps=1",
                                                      "train.save_artifacts=false"], tmp_path)
        assert result["status"] == "succeeded", result.get("error")
        step1 = runproto.read_jsonl(str(run_dir / "metrics.jsonl"))[0]["loss"]
        assert abs(step1 - reference_loss(cfg.model.name_or_path, run_dir / "data", cfg.train.max_length)) < 1e-3
        assert result["trainable_parameters"] == reference_trainable(cfg.model.name_or_path, cfg.peft)
        assert not (run_dir / "artifacts" / "torchtune").exists()


ROUND_TRIP = r"""
import importlib.util, json, os, sys, torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torchtune import config
from torchtune.models.convert_weights import hf_to_tune

spec = importlib.util.spec_from_file_location("anytune_torchtune", "plan/anytune_torchtune.py")
components = importlib.util.module_from_spec(spec)
spec.loader.exec_module(components)
cfg = OmegaConf.load("plan/torchtune.yaml")
ckpt = cfg.checkpointer.checkpoint_dir
hf = json.load(open(os.path.join(ckpt, "config.json")))
state = hf_to_tune(load_file(os.path.join(ckpt, "model.safetensors")), hf["num_attention_heads"],
                   hf["num_key_value_heads"], hf["hidden_size"])
torch.manual_seed(0)
model = config.instantiate(cfg.model)
model.load_state_dict(state, strict=False)
for m in model.modules():  # as the recipe does after loading the base
    if hasattr(m, "initialize_dora_magnitude"):
        m.initialize_dora_magnitude()
with torch.no_grad():  # an adapter that has clearly trained: random B, magnitudes off their init
    for name, p in model.named_parameters():
        if "lora_b" in name:
            p.normal_(0, 0.05)
        elif name.endswith("magnitude"):
            p.mul_(1 + 0.2 * torch.randn_like(p))
model.eval()
ids = torch.tensor([json.loads(sys.argv[1])])
with torch.no_grad():
    torch.save(model(ids), "torchtune_logits.pt")
# torchtune's checkpoint as the recipe leaves it, then anytune's artefact step on it
adapter = {k: v for k, v in model.state_dict().items() if "lora" in k or "magnitude" in k}
os.makedirs(os.path.join(cfg.checkpointer.output_dir, "epoch_0"), exist_ok=True)
torch.save(adapter, os.path.join(cfg.checkpointer.output_dir, "epoch_0", "adapter_model.pt"))
print(json.dumps(components.finish(cfg, "adapter")))
"""


@pytest.mark.slow
@pytest.mark.parametrize("peft", ["lora", "dora"])
def test_adapter_round_trip(tt_env, tiny, tmp_path, peft):
    """torchtune's own forward of a LoRA/DoRA model == peft's forward of the adapter anytune saves from it.

    Catches key names, the rotary row order of q/k (lora_B and DoRA magnitudes) and scaling.
    """
    import torch
    from peft import AutoPeftModelForCausalLM

    result, run_dir, _ = plan_only(tmp_path, f"peft={peft}", tiny_path=tiny)
    assert result["status"] == "planned", result.get("error")
    ids = list(range(3, 40))
    proc = subprocess.run([str(tt_env.python), "-c", ROUND_TRIP, json.dumps(ids)], cwd=run_dir,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"adapter": {"path": "artifacts/adapter"}}
    adapter = run_dir / "artifacts" / "adapter"
    assert sorted(p.name for p in adapter.iterdir() if "token" not in p.name) == [
        "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja"]
    assert not (run_dir / "artifacts" / "torchtune").exists()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny.resolve()) and config["use_dora"] == (peft == "dora")
    theirs = torch.load(run_dir / "torchtune_logits.pt")
    model = AutoPeftModelForCausalLM.from_pretrained(adapter).eval()
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits
        with model.disable_adapter():
            base = model(torch.tensor([ids])).logits
    assert (theirs - base).abs().max() > 1e-2, "the adapter changes the model"
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


@pytest.mark.slow
def test_full_model_artifact(tt_env, tiny, tmp_path):
    """A full fine-tune leaves artifacts/model in HF layout, no adapter_config.json, nothing of torchtune's."""
    run_dir = tmp_path / "run"
    result = runner.run(job("peft=none", "train.max_steps=2", tiny_path=tiny), run_dir)
    assert result["status"] == "succeeded", result.get("error")
    assert set(os.listdir(run_dir / "artifacts")) == {"model"}
    assert result["artifacts"] == {"model": {"path": "artifacts/model"}}
    names = set(os.listdir(run_dir / "artifacts" / "model"))
    assert {"config.json", "model.safetensors.index.json", "tokenizer.json", "chat_template.jinja"} <= names
    assert "adapter_config.json" not in names
    model, tok = load_artifact(run_dir, result)
    assert generates(model, tok)
    assert result["versions"]["torchtune"] == "0.6.1" and result["versions"]["torchao"] == "0.15.0"


@pytest.mark.slow
def test_bf16_on_cpu(tt_env, tiny, tmp_path):
    """train.precision=bf16: torchtune trains wholly in bf16; the saved model says so in config.json."""
    run_dir = tmp_path / "run"
    result = runner.run(job("peft=none", "train.precision=bf16", "train.learning_rate=1e-3", tiny_path=tiny), run_dir)
    assert result["status"] == "succeeded", result.get("error")
    losses = [r["loss"] for r in runproto.read_jsonl(str(run_dir / "metrics.jsonl"))]
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    assert json.loads((run_dir / "artifacts" / "model" / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.slow
def test_ejected_plan_runs_without_anytune(tt_env, tiny, tmp_path):
    """plan_only writes plan/run.sh; moved elsewhere, it trains in the torchtune environment, which has no anytune,
    and leaves its outcome in outcome.json (result.json is the core's alone: it still says planned)."""
    planned = tmp_path / "planned"
    result = runner.run(job("plan_only=true", "train.max_steps=3", tiny_path=tiny), planned)
    assert result["status"] == "planned", result.get("error")
    moved = tmp_path / "elsewhere"
    shutil.move(planned, moved)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    no_anytune = subprocess.run([str(tt_env.python), "-c", "import core"], cwd=tmp_path, env=env,
                                capture_output=True)
    assert no_anytune.returncode != 0, "the engine's environment must not have anytune"
    proc = subprocess.run(["sh", str(moved / "plan" / "run.sh")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = runproto.read_json(str(moved / runproto.OUTCOME))
    assert out["artifacts"] == {"adapter": {"path": "artifacts/adapter"}} and out["final"]["steps"] == 3
    assert out["versions"]["torchtune"] == "0.6.1" and out["trainable_parameters"] > 0
    assert runproto.read_json(str(moved / runproto.RESULT))["status"] == "planned", "the worker never writes it"
    assert len(runproto.read_jsonl(str(moved / "metrics.jsonl"))) == 3
    assert (moved / "artifacts" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_engine_failure_is_recorded(tt_env, tiny, tmp_path):
    """A recipe that raises: its exit code makes the run failed; the error comes from logs/train.stderr.log."""
    run_dir = tmp_path / "run"
    result = runner.run(job("train.max_steps=2", "++backend.native.model.lora_attn_modules=[nonsense]",
                            tiny_path=tiny), run_dir)
    assert result["status"] == "failed" and result["error_type"] == "StepFailed"
    assert result["exit_code"] not in (0, None) and "nonsense" in result["error"]
    assert "nonsense" in (run_dir / "logs" / "train.stderr.log").read_text()
    assert not (run_dir / "logs" / "train.outcome.json").exists(), "a crash records no outcome"
    assert result["artifacts"] == {}


def test_plan_packing(tmp_path, tiny):
    """method.packing=true: torchtune's PackedDataset (through anytune's packed_sft_dataset), steps counted there."""
    result, _, cfg = plan_only(tmp_path, "method.packing=true", "train.grad_accum=2", tiny_path=tiny)
    assert result["status"] == "planned", result.get("error")
    assert cfg["dataset"] == {"_component_": "plan.anytune_torchtune.packed_sft_dataset", "packed": True,
                              "source": "data/train.jsonl", "kind": "messages", "completion_only_loss": True,
                              "seed": 42, "max_steps": 8, "epochs": 1.0, "batch_size": 4, "grad_accum": 2,
                              "shuffle": True, "start_step": 0}
    assert cfg["max_steps_per_epoch"] is None, "the dataset holds exactly the packs of max_steps steps"
    assert cfg["metric_logger"]["max_steps"] == 8
    _, _, cfg = plan_only(tmp_path / "epochs", "method.packing=true", "train.max_steps=-1", "train.epochs=2",
                          tiny_path=tiny)
    assert cfg["dataset"]["max_steps"] == -1 and cfg["dataset"]["epochs"] == 2.0
    assert cfg["metric_logger"]["max_steps"] is None, "known once packed"


@pytest.mark.slow
@pytest.mark.parametrize("completion_only", [True, False])
def test_packing_parity_step1(tt_env, tiny, tmp_path, completion_only):
    """All examples in one pack, one step: the loss is plain transformers' loss over the unpacked examples.

    Checks the document mask, the per-example positions and that no token predicts the next example's first.
    """
    from core.conformance import reference_loss

    if tiny != TINY:
        pytest.skip("the conformance helpers compose model=tiny (core/assets/tiny-llama)")
    cfg, run_dir, result = BackendConformance().run_job("torchtune", [
        "method=sft", "peft=lora", "method.packing=true", "data.max_rows=8", "train.max_length=4096",
        "train.batch_size=1", "train.max_steps=1", "train.save_artifacts=false",
        f"method.completion_only_loss={str(completion_only).lower()}"], tmp_path)
    assert result["status"] == "succeeded", result.get("error")
    row = runproto.read_jsonl(str(run_dir / "metrics.jsonl"))[0]
    assert row["epoch"] == 1.0, "8 short examples make one pack of 4096 tokens"
    ref = reference_loss(cfg.model.name_or_path, run_dir / "data", cfg.train.max_length, completion_only)
    assert abs(row["loss"] - ref) < 1e-4, (row["loss"], ref)


@pytest.mark.slow
def test_qlora_trains(tt_env, tiny, tmp_path):
    """peft=qlora's plan trains an NF4 base (torchao) and leaves a PEFT adapter that loads on the full-precision base.

    anytune runs QLoRA on CUDA only (as TRL); torchao's NF4 also runs on CPU, so CI runs the ejected
    plan with its device switched to cpu. The H100 run is in docs/torchtune.md.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    model = tmp_path / "nf4-able"  # tiny's tokenizer, 128 wide: every base weight a multiple of 64 x 256 values
    shutil.copytree(tiny, model)
    hf = {**json.loads((tiny / "config.json").read_text()), "hidden_size": 128, "head_dim": 32,
          "num_key_value_heads": 4, "intermediate_size": 256}
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**{k: v for k, v in hf.items() if k != "architectures"})).save_pretrained(model)
    result, run_dir, cfg = plan_only(tmp_path, "peft=qlora", "train.device=cuda", "train.precision=bf16",
                                     tiny_path=model)
    assert result["status"] == "planned", result.get("error")
    plan = run_dir / PLAN_FILE
    plan.write_text(plan.read_text().replace("\ndevice: cuda\n", "\ndevice: cpu\n"))
    proc = subprocess.run([str(tt_env.python), "-c", "from omegaconf import OmegaConf; from torchtune import config; "
                           "m = config.instantiate(OmegaConf.load('plan/torchtune.yaml').model); "
                           "print(type(m.layers[0].attn.q_proj.weight).__name__)"], cwd=run_dir,
                          capture_output=True, text=True)
    assert proc.stdout.strip().splitlines()[-1] == "NF4Tensor", proc.stderr[-2000:]
    proc = subprocess.run(["sh", "plan/run.sh"], cwd=run_dir, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [r["loss"] for r in runproto.read_jsonl(str(run_dir / "metrics.jsonl"))]
    assert len(losses) == 8 and sum(losses[-2:]) < sum(losses[:2]), losses
    out = runproto.read_json(str(run_dir / runproto.OUTCOME))
    assert out["artifacts"] == {"adapter": {"path": "artifacts/adapter"}}
    config = json.loads((run_dir / "artifacts" / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(model.resolve()) and "quantization_config" not in config
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32),
                                           run_dir / "artifacts" / "adapter").eval()
    ids = torch.tensor([list(range(3, 40))])
    with torch.no_grad():
        tuned = peft_model(ids).logits
        with peft_model.disable_adapter():
            base = peft_model(ids).logits
    assert (tuned - base).abs().max() > 1e-2, "the adapter changes the model"
