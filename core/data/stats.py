"""Token statistics of canonical records with the model's own tokenizer (``tokenizers``, no transformers).

The text counted is the text engines train on: a conversation rendered with the
template of record; prompt + completion + eos; text + eos. A preference row
counts as the longer of prompt + chosen and prompt + rejected.

Prompts (for ``prompt_fills_max_length``) are tokenised only where they could
reach ``max_length``: :func:`token_bound` gives a cheap upper bound on a text's
token count from its characters, derived from the tokenizer's own pipeline, and
a prompt whose bound stays below ``max_length`` cannot fill it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from core import lossmask


def load_tokenizer(model_path: str | None):
    """The model's fast tokenizer (``tokenizer.json``) with truncation and padding off, or None."""
    path = tokenizer_file(model_path)
    if path is None:
        return None
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.no_truncation()
    tok.no_padding()
    return tok


def tokenizer_file(model_path: str | None) -> Path | None:
    """``tokenizer.json`` of a local model directory, or None (no model path, or no such file)."""
    if not model_path:
        return None
    path = Path(model_path) / "tokenizer.json"
    return path if path.is_file() else None


def texts(kind: str, record: dict, render: Callable[..., str] | None, eos: str) -> list[str]:
    """The training text(s) of one canonical record (two for a preference row)."""
    if kind == "messages":
        return [lossmask.renderer(render, record.get("tools"))(record["messages"], False)]
    if kind == "preference":
        return [render(record["prompt"] + record["chosen"], False),
                render(record["prompt"] + record["rejected"], False)]
    if kind == "unpaired":
        return [render(record["prompt"] + record["completion"], False)]
    if kind == "prompt_completion":
        return [record["prompt"] + record["completion"] + eos]
    return [record["text"] + eos]


def prompt_text(kind: str, record: dict, render: Callable[..., str] | None) -> str | None:
    """The text before the first token that carries loss (the prompt), or None for plain text."""
    if kind in ("preference", "unpaired"):
        return render(record["prompt"], True)
    if kind == "messages":
        msgs = record["messages"]
        first = next((i for i, m in enumerate(msgs) if m["role"] == "assistant" and m.get("weight") != 0), len(msgs))
        return lossmask.renderer(render, record.get("tools"))(msgs[:first], True)
    if kind == "prompt_completion":
        return record["prompt"]
    return None


def token_lengths(tokenizer, texts_per_row: list[list[str]]) -> list[int]:
    """Tokens per row (the longest of a row's texts), encoded in one batch."""
    flat = [t for row in texts_per_row for t in row]
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    lengths = [len(e) for e in encode(flat, add_special_tokens=False)]
    out, i = [], 0
    for row in texts_per_row:
        n = len(row)
        out.append(lengths[i] if n == 1 else max(lengths[i:i + n]))
        i += n
    return out


def summary(lengths: list[int], max_length: int) -> dict[str, Any]:
    """total, mean, max tokens, the 50th/90th/99th percentiles, and how many rows exceed ``max_length``
    (``truncated``)."""
    if not lengths:
        return {"total": 0, "mean": 0.0, "max": 0, "p50": 0, "p90": 0, "p99": 0, "truncated": 0}
    total = sum(lengths)
    ordered = sorted(lengths)
    return {"total": total, "mean": round(total / len(lengths), 1), "max": ordered[-1],
            **{f"p{q}": percentile(ordered, q) for q in (50, 90, 99)},
            "truncated": sum(1 for n in lengths if n > max_length)}


def percentile(ordered: list[int], q: int) -> int:
    """The ``q``-th percentile of sorted values, nearest rank (a value that occurs)."""
    rank = max(1, -(-q * len(ordered) // 100))
    return ordered[rank - 1]


# --------------------------------------------------------------------------- upper bound on token counts

#: Models in which every token covers at least one byte of the (normalised, pre-tokenised) text.
_MODELS = ("BPE", "Unigram", "WordPiece", "WordLevel")
#: Pre-tokenizers that only split text (or drop whitespace): they add no characters.
_SPLITTERS = ("Split", "Digits", "Punctuation", "Whitespace", "WhitespaceSplit", "BertPreTokenizer",
              "CharDelimiterSplit", "UnicodeScripts")
#: Normalizers that leave ASCII text as it is.
_ASCII_SAFE = ("NFC", "NFD", "NFKC", "NFKD", "Lowercase")


def token_bound(tokenizer) -> Callable[[str], float] | None:
    """A function giving an upper bound on the tokens of a text (``add_special_tokens=False``), or None.

    Every token of the models in ``_MODELS``, added tokens included, covers at least one byte
    of the text it sees, so the bound is the text's UTF-8 byte count, corrected for the
    characters the tokenizer's own pipeline substitutes (a space that becomes ``▁`` costs one
    token when ``▁`` is in the vocabulary, else its bytes) and, when the pipeline prepends a
    character to each section (a ByteLevel prefix space, a Metaspace or Prepend ``▁``), for one
    such prefix per section. Unicode normalisers are accepted for ASCII texts only, which they
    leave unchanged. For a pipeline this cannot reason about (a regex replacement, a precompiled
    sentencepiece normaliser, an unknown component) there is no bound: None, encode everything.
    """
    if type(tokenizer.model).__name__ not in _MODELS:
        return None
    plan: dict[str, Any] = {"replace": {}, "prefix": None, "ascii_only": False}
    try:
        for component in (tokenizer.normalizer, tokenizer.pre_tokenizer):
            if component is not None and not _plan(json.loads(component.__getstate__()), plan):
                return None
    except (AttributeError, TypeError, ValueError):
        return None

    def cost(piece: str) -> int:  # tokens a substituted piece can cost at most
        return 1 if tokenizer.token_to_id(piece) is not None else len(piece.encode("utf-8"))

    # a replaced character's cost instead of its own bytes
    extra = tuple((old, cost(new) - len(old.encode("utf-8"))) for old, new in plan["replace"].items())
    extra = tuple((old, d) for old, d in extra if d > 0)
    mult = 1 + (cost(plan["prefix"]) if plan["prefix"] else 0)  # sections <= added tokens + 1 <= bytes + 1
    ascii_only, inf = plan["ascii_only"], float("inf")

    def bound(text: str) -> float:
        if ascii_only and not text.isascii():
            return inf
        n = len(text.encode("utf-8"))
        for old, d in extra:
            n += d * text.count(old)
        return mult * (n + 1)

    return bound


def _plan(node: dict, plan: dict) -> bool:
    """Fold one normaliser or pre-tokenizer (as serialised JSON) into ``plan``; False: no bound possible."""
    kind = node.get("type")
    if kind == "Sequence":
        return all(_plan(child, plan) for child in node.get("normalizers") or node.get("pretokenizers") or [])
    if kind in _SPLITTERS or kind in ("Strip", "StripAccents"):  # only split or drop characters
        return True
    if kind in _ASCII_SAFE:
        plan["ascii_only"] = True
        return True
    if kind == "Prepend":
        return _prefix(node.get("prepend"), plan)
    if kind == "Replace":
        pattern, content = (node.get("pattern") or {}).get("String"), node.get("content")
        if not isinstance(pattern, str) or len(pattern) != 1 or not isinstance(content, str):
            return False  # a regex or a multi-character pattern may match across sections
        return _replace(pattern, content, plan)
    if kind == "ByteLevel":
        return _prefix(" ", plan) if node.get("add_prefix_space") else True
    if kind == "Metaspace":
        replacement = node.get("replacement") or "\u2581"
        if not _replace(" ", replacement, plan):
            return False
        if node.get("prepend_scheme", "always") != "never" or node.get("add_prefix_space"):
            return _prefix(replacement, plan)
        return True
    return False


def _replace(old: str, new: str, plan: dict) -> bool:
    """Record ``old`` -> ``new``; a chain (replacing what an earlier step produced) is not reasoned about."""
    if plan["replace"].get(old) == new:
        return True
    if old in plan["replace"] or any(old in v for v in plan["replace"].values()) or \
            (plan["prefix"] and old in plan["prefix"]):
        return False
    plan["replace"][old] = new
    return True


def _prefix(piece, plan: dict) -> bool:
    """Record a piece prepended to each section; two different ones are not reasoned about."""
    if not isinstance(piece, str) or not piece or (plan["prefix"] not in (None, piece)):
        return False
    plan["prefix"] = piece
    return True
