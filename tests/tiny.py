"""Build a tiny random-init Llama with a ChatML byte-level BPE tokenizer, offline and on CPU.

The shipped asset ``core/assets/tiny-llama/`` (``model=tiny``) is built with this file::

    python tests/tiny.py core/assets/tiny-llama

Tests call :func:`build_tiny_model` for variants (other sizes, seeds, corpora). The
tokenizer is trained on local text only (``../shared/data``), so nothing is downloaded.
"""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
"""The project's shared data sets (``/work/shared/data``)."""
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
          " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
          "{% endif %}")
"""The standard Hugging Face ChatML template (as in Qwen2 and core/assets/templates/chatml.jinja)."""
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]
"""Special tokens, ids 0, 1, 2: ``<|endoftext|>`` is bos and pad, ``<|im_end|>`` is eos."""


def default_corpus(gsm8k_rows: int = 2000, hh_rows: int = 500) -> list[str]:
    """Questions and answers of the first GSM8K train rows, and chosen dialogues of HH-RLHF harmless-base."""
    texts: list[str] = []
    with open(DATA / "gsm8k" / "train.jsonl", encoding="utf-8") as f:
        for _, line in zip(range(gsm8k_rows), f):
            row = json.loads(line)
            texts += [row["question"], row["answer"]]
    with gzip.open(DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rt", encoding="utf-8") as f:
        for _, line in zip(range(hh_rows), f):
            texts.append(json.loads(line)["chosen"])
    return texts


def build_tokenizer(corpus: list[str], vocab_size: int, max_length: int):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=ENDOFTEXT, eos_token=IM_END,
                                   pad_token=ENDOFTEXT, additional_special_tokens=[IM_START],
                                   model_max_length=max_length, chat_template=CHATML, padding_side="right")


def build_tiny_model(out_dir: str | Path, *, vocab_size: int = 1024, hidden_size: int = 64,
                     intermediate_size: int = 128, num_layers: int = 2, num_heads: int = 4, num_kv_heads: int = 2,
                     max_position_embeddings: int = 1024, seed: int = 0,
                     corpus: list[str] | None = None) -> Path:
    """Write a random-init ``LlamaForCausalLM`` (float32 safetensors, tied embeddings) and its tokenizer.

    Deterministic for a given ``seed`` and ``corpus``. Returns ``out_dir``.

    :param corpus: texts the tokenizer is trained on; None: :func:`default_corpus`.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(default_corpus() if corpus is None else corpus, vocab_size,
                                max_position_embeddings)
    if len(tokenizer) > vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, more than vocab_size={vocab_size}")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads,
                         num_key_value_heads=num_kv_heads, max_position_embeddings=max_position_embeddings,
                         tie_word_embeddings=True, bos_token_id=ids[ENDOFTEXT], eos_token_id=ids[IM_END],
                         pad_token_id=ids[ENDOFTEXT], dtype="float32")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=ids[ENDOFTEXT], eos_token_id=ids[IM_END],
                                               pad_token_id=ids[ENDOFTEXT])
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _portable_tokenizer_config(out / "tokenizer_config.json")
    return out


def _portable_tokenizer_config(path: Path) -> None:
    """Rewrite transformers 5's tokenizer_config.json so that transformers 4 (other engines' envs) loads it too."""
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg.pop("backend", None)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["additional_special_tokens"] = cfg.pop("extra_special_tokens", [])
    cfg["chat_template"] = CHATML  # also in chat_template.jinja, which transformers < 4.50 does not read
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def size_of(path: str | Path) -> int:
    """Total bytes of the files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/tiny.py OUT_DIR")
    path = build_tiny_model(sys.argv[1])
    print(f"{path}: {size_of(path) / 1e6:.2f} MB")
