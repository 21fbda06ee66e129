"""Token statistics of canonical records with the model's own tokenizer (``tokenizers``, no transformers).

The text counted is the text engines train on: a conversation rendered with the
template of record; prompt + completion + eos; text + eos. A preference row
counts as the longer of prompt + chosen and prompt + rejected.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


def load_tokenizer(model_path: str | None):
    """The model's fast tokenizer (``tokenizer.json``) with truncation and padding off, or None."""
    if not model_path:
        return None
    path = Path(model_path) / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.no_truncation()
    tok.no_padding()
    return tok


def texts(kind: str, record: dict, render: Callable[[list, bool], str] | None, eos: str) -> list[str]:
    """The training text(s) of one canonical record (two for a preference row)."""
    if kind == "messages":
        return [render(record["messages"], False)]
    if kind == "preference":
        return [render(record["prompt"] + record["chosen"], False),
                render(record["prompt"] + record["rejected"], False)]
    if kind == "prompt_completion":
        return [record["prompt"] + record["completion"] + eos]
    return [record["text"] + eos]


def prompt_text(kind: str, record: dict, render: Callable[[list, bool], str] | None) -> str | None:
    """The text before the first token that carries loss (the prompt), or None for plain text."""
    if kind == "preference":
        return render(record["prompt"], True)
    if kind == "messages":
        msgs = record["messages"]
        first = next((i for i, m in enumerate(msgs) if m["role"] == "assistant"), len(msgs))
        return render(msgs[:first], True)
    if kind == "prompt_completion":
        return record["prompt"]
    return None


def token_lengths(tokenizer, texts_per_row: list[list[str]]) -> list[int]:
    """Tokens per row (the longest of a row's texts), encoded in one batch."""
    flat = [t for row in texts_per_row for t in row]
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    lengths = [len(e.ids) for e in encode(flat, add_special_tokens=False)]
    out, i = [], 0
    for row in texts_per_row:
        out.append(max(lengths[i:i + len(row)]))
        i += len(row)
    return out


def summary(lengths: list[int], max_length: int) -> dict[str, Any]:
    """total, mean, max tokens and how many rows exceed ``max_length`` (``truncated``)."""
    if not lengths:
        return {"total": 0, "mean": 0.0, "max": 0, "truncated": 0}
    total = sum(lengths)
    return {"total": total, "mean": round(total / len(lengths), 1), "max": max(lengths),
            "truncated": sum(1 for n in lengths if n > max_length)}
