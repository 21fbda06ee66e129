"""The shipped tiny model (core/assets/tiny-llama) loads offline, generates, and is rebuilt deterministically."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tiny import CHATML, build_tiny_model, size_of

ASSET = Path(__file__).resolve().parents[1] / "core" / "assets" / "tiny-llama"
CHAT = [{"role": "system", "content": "You solve maths problems."},
        {"role": "user", "content": "What is 2 + 3?"}]


def test_asset_is_small_and_complete():
    names = {p.name for p in ASSET.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja"} <= names
    assert size_of(ASSET) < 2_000_000


def test_asset_loads_offline_and_generates():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    tok = AutoTokenizer.from_pretrained(ASSET)
    model = AutoModelForCausalLM.from_pretrained(ASSET)
    assert model.dtype == torch.float32 and model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert len(tok) == model.config.vocab_size == 1024
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|endoftext|>", "<|endoftext|>")
    assert model.config.eos_token_id == tok.eos_token_id and model.generation_config.pad_token_id == tok.pad_token_id
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]
    text = "Natalia sold 48/2 = 24 clips in May."
    assert tok.decode(tok(text).input_ids) == text


def test_chat_template_renders_chatml():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ASSET)
    assert tok.chat_template == CHATML == (ASSET / "chat_template.jinja").read_text()
    assert CHATML == (ASSET.parent / "templates" / "chatml.jinja").read_text()
    text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou solve maths problems.<|im_end|>\n"
                    "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    ids = tok(text).input_ids
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3 and ids.count(tok.eos_token_id) == 2


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def test_same_seed_same_model(tmp_path):
    corpus = ["the cat sat on the mat", "two plus three is five"] * 50
    a = build_tiny_model(tmp_path / "a", vocab_size=300, seed=3, corpus=corpus)
    b = build_tiny_model(tmp_path / "b", vocab_size=300, seed=3, corpus=corpus)
    c = build_tiny_model(tmp_path / "c", vocab_size=300, seed=4, corpus=corpus)
    ta, tb, tc = _tensors(a), _tensors(b), _tensors(c)
    assert ta.keys() == tb.keys() and all((ta[k] == tb[k]).all() for k in ta)
    assert any((ta[k] != tc[k]).any() for k in ta)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_asset_is_what_tiny_py_builds(tmp_path):
    """The committed asset is reproducible: ``python tests/tiny.py OUT`` rebuilds it."""
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "tests/tiny.py", str(tmp_path)], cwd=root, check=True, capture_output=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json"):
        assert (tmp_path / name).read_bytes() == (ASSET / name).read_bytes(), name
    built, shipped = _tensors(tmp_path), _tensors(ASSET)
    assert built.keys() == shipped.keys() and all((built[k] == shipped[k]).all() for k in built)
