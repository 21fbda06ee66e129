"""Which tokens carry loss: one definition for every engine. Standard library only.

Copied into ``plan/`` beside workers that tokenise themselves (``ctx.ship(lossmask)``),
so every engine masks exactly the same tokens, and an ejected plan runs without anytune.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable


def loss_spans(kind: str, record: dict, render: Callable[[list, bool], str],
               completion_only: bool, eos: str = "") -> tuple[str, list[tuple[int, int]]]:
    """Text of one canonical record and the character spans that carry loss.

    :param kind: canonical record kind (messages, prompt_completion, text).
    :param render: ``render(messages, add_generation_prompt) -> str`` with the template of record.
    :param completion_only: if false the whole text carries loss.
    :returns: (text, spans). Assistant turns (messages) or the completion carry loss.
    """
    if kind == "messages":
        msgs = record["messages"]
        text = render(msgs, False)
        if not completion_only:
            return text, [(0, len(text))]
        spans = []
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                before, upto = render(msgs[:i], True), render(msgs[: i + 1], False)
                if not (text.startswith(before) and text.startswith(upto)):
                    raise ValueError("the chat template renders earlier turns differently once later turns "
                                     "follow, so assistant-only loss masks cannot be derived; set "
                                     "method.completion_only_loss=false or use another data.chat_template")
                spans.append((len(before), len(upto)))
    elif kind == "prompt_completion":
        text = record["prompt"] + record["completion"] + eos
        spans = [(len(record["prompt"]), len(text))]
    elif kind == "text":
        text = record["text"] + eos
        spans = [(0, len(text))]
    else:
        raise ValueError(f"no loss spans for record kind {kind!r}")
    return text, (spans if completion_only else [(0, len(text))])


def tokenize_records(records: Iterable[dict], tokenizer: Any, kind: str, completion_only: bool,
                     max_length: int) -> list[dict]:
    """``input_ids`` and ``completion_mask`` (1 = token carries loss) for each canonical record.

    :param tokenizer: a Hugging Face fast tokenizer whose ``chat_template`` is the template of record.
    """
    def render(messages, add_generation_prompt):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    rows = []
    for rec in records:
        text, spans = loss_spans(kind, rec, render, completion_only, eos=tokenizer.eos_token or "")
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=True,
                        max_length=max_length)
        rows.append({"input_ids": list(enc["input_ids"]),
                     "completion_mask": mask_from_offsets(enc["offset_mapping"], spans)})
    return rows


def mask_from_offsets(offsets: Iterable[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """1 for tokens whose first character lies in a loss span, else 0."""
    out = []
    for start, end in offsets:
        out.append(int(any(a <= start < b for a, b in spans) and end > start))
    return out
