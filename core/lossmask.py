"""Which tokens carry loss: one definition for every engine. Standard library only.

Copied into ``plan/`` beside workers that tokenise themselves (``ctx.ship(lossmask)``),
so every engine masks exactly the same tokens, and an ejected plan runs without anytune.

The rule: assistant turns carry loss (the completion, for prompt/completion records; every token,
for text), from the end of the generation prompt before the turn to the end of the turn as the
template renders it. A turn marked ``weight: 0`` carries none; a turn with ``train_spans`` carries
loss on those characters of its content only, and on the end of its turn (the template's closing
tokens) when any of them does. A token carries loss when its first character does.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

#: Keys of a canonical turn that say how it is trained; templates never see them.
LOSS_KEYS = ("weight", "train_spans")


def chat_view(messages: list[dict]) -> list[dict]:
    """``messages`` as the chat template sees them: without the training keys (:data:`LOSS_KEYS`)."""
    return [{k: v for k, v in m.items() if k not in LOSS_KEYS} if any(k in m for k in LOSS_KEYS) else m
            for m in messages]


def renderer(render: Callable[..., str], tools: list | None) -> Callable[[list, bool], str]:
    """``render(messages, add_generation_prompt)`` for one record: training keys removed, the record's ``tools``
    passed to the template (as ``apply_chat_template(..., tools=...)`` does) when it has some."""
    if tools:
        return lambda messages, gen: render(chat_view(messages), gen, tools=tools)
    return lambda messages, gen: render(chat_view(messages), gen)


def loss_spans(kind: str, record: dict, render: Callable[..., str],
               completion_only: bool, eos: str = "") -> tuple[str, list[tuple[int, int]]]:
    """Text of one canonical record and the character spans that carry loss.

    :param kind: canonical record kind (messages, prompt_completion, text).
    :param render: ``render(messages, add_generation_prompt, tools=None) -> str`` with the template of record
        (``tools`` is passed only for a record that has tools).
    :param completion_only: if false the whole text carries loss (per-turn flags included).
    :returns: (text, spans). Assistant turns (messages) or the completion carry loss, as the module says.
    :raises ValueError: the template renders a conversation so that the turns cannot be located.
    """
    if kind == "messages":
        msgs = record["messages"]
        view = renderer(render, record.get("tools"))
        text = view(msgs, False)
        if not completion_only:
            return text, [(0, len(text))]
        spans = []
        for i, m in enumerate(msgs):
            if m["role"] != "assistant" or m.get("weight") == 0:
                continue
            before, upto = view(msgs[:i], True), view(msgs[: i + 1], False)
            if not (text.startswith(before) and text.startswith(upto)):
                raise ValueError("the chat template renders earlier turns differently once later turns "
                                 "follow, so assistant-only loss masks cannot be derived; set "
                                 "method.completion_only_loss=false or use another data.chat_template")
            if "train_spans" not in m:
                spans.append((len(before), len(upto)))
                continue
            start = text.find(m["content"], len(before), len(upto))
            if start < 0:
                raise ValueError("the chat template does not render an assistant turn's content as it is, so its "
                                 "trained parts (train_spans) cannot be located; use another data.chat_template")
            spans += [(start + a, start + b) for a, b in m["train_spans"]]
            if m["train_spans"]:
                spans.append((start + len(m["content"]), len(upto)))
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
    def render(messages, add_generation_prompt, tools=None):
        """The record rendered by the tokenizer's template of record."""
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)

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
