"""Row formats: which fields each has, detecting one from a row, and normalising a row to a canonical record.

Canonical records (what engines read):

- ``messages``: ``{"messages": [turns...], "tools"?: [schemas]}``; a turn is
  ``{"role": "system|user|assistant|tool", "content": str}`` with, where the file says so, ``weight: 0``,
  ``train_spans``, ``tool_calls``, ``tool_call_id``, ``name`` (see :mod:`core.data.conversation`)
- ``prompt_completion``: ``{"prompt": str, "completion": str}``
- ``preference``: ``{"prompt": [turns...], "chosen": [assistant turn], "rejected": [assistant turn]}``
- ``unpaired``: ``{"prompt": [turns...], "completion": [assistant turn], "label": bool}`` (KTO)
- ``text``: ``{"text": str}``

Preference and unpaired rows are normalised in :mod:`core.data.pairs`; both read rows through
:mod:`core.data.rows` (column mapping, aliases, shared turn builders).
"""
from __future__ import annotations

from typing import Callable

from core.data import conversation, pairs
from core.data.readers import BadRow, _json_type
from core.data.rows import Fields, maybe_json_list, sharegpt_turns, system_column, user_text, with_system
from core.errors import ConfigError, did_you_mean

#: format -> its canonical fields (the keys ``data.columns`` may map).
FIELDS = {
    "messages": ("messages", "tools", "system"),
    "sharegpt": ("conversations", "system", "tools"),
    "alpaca": ("instruction", "input", "output", "system", "history"),
    "prompt_completion": ("prompt", "completion"),
    "prompt_completion_chat": ("prompt", "completion", "tools"),
    "preference": ("prompt", "chosen", "rejected", "messages", "conversations", "instruction", "input", "system"),
    "unpaired": ("prompt", "completion", "messages", "conversations", "label", "instruction", "input", "system"),
    "text": ("text",),
}
#: format -> fields a row must have for auto-detection to pick it, in the order formats are tried
#: (``unpaired`` also needs a boolean ``label``; see :func:`detect`).
DETECT = {
    "preference": ("chosen", "rejected"),
    "unpaired": ("label",),
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
#: format -> canonical record kind it normalises to.
KIND = {"messages": "messages", "sharegpt": "messages", "alpaca": "messages",
        "prompt_completion": "prompt_completion", "prompt_completion_chat": "messages", "preference": "preference",
        "unpaired": "unpaired",
        "text": "text"}
#: Columns of multimodal rows (LLaMA-Factory, TRL's vision formats): a row with any of them non-empty is refused.
MEDIA_COLUMNS = ("images", "image", "videos", "video", "audios", "audio")


def check_columns(columns: dict[str, str], fmt: str | None) -> None:
    """:raises ConfigError: a ``data.columns`` key that is no canonical field (of ``fmt``, when known)."""
    allowed = sorted({f for fields in FIELDS.values() for f in fields})
    for key, col in columns.items():
        if key not in allowed:
            raise ConfigError(f"data.columns has unknown canonical field '{key}'{did_you_mean(key, allowed)}; "
                              f"map canonical -> file column, canonical fields: {', '.join(allowed)}")
        if not isinstance(col, str) or not col:
            raise ConfigError(f"data.columns.{key} must name a column of the file, got {col!r}")
        if fmt in FIELDS and key not in FIELDS[fmt]:
            raise ConfigError(f"data.columns.{key} does not apply to the {fmt} format "
                              f"(its fields: {', '.join(FIELDS[fmt])})")


def detect(row: dict, columns: dict[str, str]) -> str | None:
    """The format whose fields ``row`` has (after ``columns`` mapping), or None."""
    fields = Fields(columns)
    for fmt, needed in DETECT.items():
        if not all(fields.has(row, f) for f in needed):
            continue
        if fmt == "unpaired":  # a boolean label beside a conversation or a prompt/completion pair
            if not isinstance(fields.get(row, "label"), bool) or not (
                    fields.has(row, "messages") or fields.has(row, "conversations") or (fields.has(row, "completion")
                    and any(fields.has(row, f) for f in ("prompt", "instruction", "input")))):
                continue
        if fmt == "prompt_completion" and isinstance(fields.get(row, "prompt"), list):
            return "prompt_completion_chat"  # TRL's conversational prompt/completion: message lists
        return fmt
    return None


def describe_formats() -> str:
    """One line per format and the fields that identify it (for error messages)."""
    return "; ".join(f"{fmt}: {'/'.join(DETECT[fmt])}" + (" (boolean) + messages or prompt/completion"
                                                          if fmt == "unpaired" else "") for fmt in DETECT)


def normaliser(fmt: str, columns: dict[str, str], system_prompt: str | None) -> Callable[[dict], dict]:
    """A function turning one raw row of format ``fmt`` into its canonical record (raises :class:`BadRow`)."""
    fields = Fields(columns)
    conv = {"messages": _messages, "sharegpt": _sharegpt, "alpaca": _alpaca, "preference": pairs.preference,
            "prompt_completion": _prompt_completion, "prompt_completion_chat": _prompt_completion_chat,
            "unpaired": pairs.unpaired}
    if fmt in conv:
        def normalise(row: dict) -> dict:
            """The canonical record of ``row``; rows with media columns are refused first."""
            _no_media_columns(row)
            return conv[fmt](row, fields, system_prompt)
        return normalise
    if fmt == "text":
        return lambda row: {"text": conversation.text_field(fields.need(row, "text"), "text")}
    raise ConfigError(f"unknown data format {fmt!r}; known: {', '.join(FIELDS)}")


def _no_media_columns(row: dict) -> None:
    """:raises BadRow: the row has a non-empty image, video or audio column."""
    for col in MEDIA_COLUMNS:
        value = row.get(col)
        if value not in (None, "", [], {}):
            count = f" ({len(value)} item(s))" if isinstance(value, list) else ""
            raise BadRow(f"column '{col}' holds media{count}: multimodal rows (images, video, audio) are not "
                         "supported, only text")


def _with_tools(record: dict, row: dict, fields: Fields) -> dict:
    """``record`` with the row's ``tools`` list, when it has a non-empty one."""
    value = fields.get(row, "tools")
    if value not in (None, "", []):
        tools = conversation.tools(value, "tools")
        if tools:
            record["tools"] = tools
    return record


def _messages(row: dict, fields: Fields, system_prompt: str | None) -> dict:
    """OpenAI chat rows (and Axolotl's, LLaMA-Factory v1's): ``messages`` -> a messages record."""
    msgs = system_column(row, fields, conversation.turns(maybe_json_list(fields.need(row, "messages")), "messages"),
                         "messages")
    conversation.order(msgs, "messages")
    return _with_tools({"messages": with_system(_some_loss(msgs, "messages"), system_prompt)}, row, fields)


def _some_loss(msgs: list[dict], name: str) -> list[dict]:
    """:raises BadRow: every assistant turn is marked to carry no loss (the row would teach nothing)."""
    if all(m.get("weight") == 0 for m in msgs if m["role"] == "assistant"):
        raise BadRow(f"no turn of {name} carries loss: every assistant turn has weight 0 / train false")
    return msgs


def _sharegpt(row: dict, fields: Fields, system_prompt: str | None) -> dict:
    """ShareGPT rows: ``conversations`` (and a ``system`` column) -> a messages record."""
    msgs = system_column(row, fields, sharegpt_turns(fields.need(row, "conversations"), "conversations"),
                          "conversations")
    conversation.order(msgs, "conversations")
    return _with_tools({"messages": with_system(_some_loss(msgs, "conversations"), system_prompt)}, row, fields)


def _history(row: dict, fields: Fields) -> list[dict]:
    """LLaMA-Factory's alpaca ``history``: ``[[instruction, response], ...]`` before the row's own turn."""
    value = fields.get(row, "history")
    if value in (None, "", []):
        return []
    value = maybe_json_list(value)
    if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 for p in value):
        raise BadRow("wrong type: history must be a list of [instruction, response] pairs")
    out = []
    for i, (q, a) in enumerate(value, 1):
        out += [{"role": "user", "content": conversation.text_field(q, f"history pair {i} instruction")},
                {"role": "assistant", "content": conversation.text_field(a, f"history pair {i} response")}]
    return out


def _alpaca(row: dict, fields: Fields, system_prompt: str | None) -> dict:
    """Alpaca rows (LLaMA-Factory's ``system`` and ``history`` too) -> a messages record."""
    user = user_text(row, fields)
    output = conversation.text_field(fields.need(row, "output"), "output")
    msgs = _history(row, fields) + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return {"messages": with_system(system_column(row, fields, msgs, "the row"), system_prompt)}


def _prompt_completion(row: dict, fields: Fields, system_prompt: str | None) -> dict:
    """Plain strings, trained as ``prompt + completion + eos``."""
    if row.get("system") not in (None, ""):
        raise BadRow("the row has a system column, which plain prompt/completion rows cannot carry (they are "
                     "trained as prompt + completion, without a chat template); put it in the prompt, or give "
                     "messages")
    return {"prompt": conversation.text_field(fields.need(row, "prompt"), "prompt"),
            "completion": conversation.text_field(fields.need(row, "completion"), "completion")}


def _prompt_completion_chat(row: dict, fields: Fields, system_prompt: str | None) -> dict:
    """Message lists (TRL's conversational prompt/completion) -> messages; the prompt's own assistant turns
    carry no loss (only the completion does, as in TRL)."""
    prompt, completion = fields.need(row, "prompt"), fields.need(row, "completion")
    if not (isinstance(prompt, list) and isinstance(completion, list)):
        raise BadRow(f"prompt and completion must both be message lists (conversational prompt/completion), got "
                     f"{_json_type(prompt)} and {_json_type(completion)}")
    before = [{**m, "weight": 0} if m["role"] == "assistant" else m
              for m in (_no_spans(t) for t in conversation.turns(prompt, "prompt"))]
    after = conversation.turns(completion, "completion")
    if after[0]["role"] != "assistant":
        raise BadRow(f"completion starts with {conversation.article(after[0]['role'])} {after[0]['role']} turn; "
                     "it must start with the assistant's turn")
    msgs = before + after
    conversation.order(msgs, "prompt + completion")
    return _with_tools({"messages": with_system(_some_loss(msgs, "the completion"), system_prompt)}, row, fields)


def _no_spans(turn: dict) -> dict:
    """``turn`` without its training keys."""
    return {k: v for k, v in turn.items() if k not in ("weight", "train_spans")}
