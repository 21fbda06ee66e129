"""Row formats: which fields each has, detecting one from a row, and normalising a row to a canonical record.

Canonical records (what engines read):

- ``messages``: ``{"messages": [{"role": "system|user|assistant", "content": str}, ...]}``
- ``prompt_completion``: ``{"prompt": str, "completion": str}``
- ``preference``: ``{"prompt": [turns...], "chosen": [assistant turn], "rejected": [assistant turn]}``
- ``text``: ``{"text": str}``
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable

from core.data import conversation
from core.data.readers import BadRow, _json_type
from core.errors import ConfigError, did_you_mean

#: format -> its canonical fields (the keys ``data.columns`` may map).
FIELDS = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "input", "output"),
    "prompt_completion": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
    "text": ("text",),
}
#: format -> fields a row must have for auto-detection to pick it, in the order formats are tried.
DETECT = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "preference": ("chosen", "rejected"),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
#: format -> canonical record kind it normalises to.
KIND = {"messages": "messages", "sharegpt": "messages", "alpaca": "messages",
        "prompt_completion": "prompt_completion", "preference": "preference", "text": "text"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}
_DIALOGUE = re.compile(r"(?:\A\s*|\n\n)(Human|Assistant):[ \t]?")


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
    for fmt, needed in DETECT.items():
        if all(columns.get(f, f) in row for f in needed):
            return fmt
    return None


def describe_formats() -> str:
    """One line per format and the fields that identify it (for error messages)."""
    return "; ".join(f"{fmt}: {'/'.join(DETECT[fmt])}" for fmt in DETECT)


def normaliser(fmt: str, columns: dict[str, str], system_prompt: str | None) -> Callable[[dict], dict]:
    """A function turning one raw row of format ``fmt`` into its canonical record (raises :class:`BadRow`)."""
    fields = _Fields(columns)
    conv = {"messages": _messages, "sharegpt": _sharegpt, "alpaca": _alpaca, "preference": _preference}
    if fmt in conv:
        return lambda row: conv[fmt](row, fields, system_prompt)
    if fmt == "prompt_completion":
        return lambda row: {"prompt": conversation.text_field(fields.need(row, "prompt"), "prompt"),
                            "completion": conversation.text_field(fields.need(row, "completion"), "completion")}
    if fmt == "text":
        return lambda row: {"text": conversation.text_field(fields.need(row, "text"), "text")}
    raise ConfigError(f"unknown data format {fmt!r}; known: {', '.join(FIELDS)}")


class _Fields:
    """Looks canonical fields up in a row through ``data.columns``."""

    def __init__(self, columns: dict[str, str]):
        self.columns = columns

    def col(self, field: str) -> str:
        return self.columns.get(field, field)

    def need(self, row: dict, field: str) -> Any:
        col = self.col(field)
        if col not in row:
            mapped = f" (data.columns.{field})" if col != field else ""
            raise BadRow(f"missing field '{col}'{mapped}")
        return row[col]

    def get(self, row: dict, field: str) -> Any:
        return row.get(self.col(field))


def _with_system(msgs: list[dict], system_prompt: str | None) -> list[dict]:
    if system_prompt and msgs[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}] + msgs
    return msgs


def _maybe_json_list(value: Any) -> Any:
    """A list stored as JSON text (a CSV cell) becomes the list."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _messages(row: dict, fields: _Fields, system_prompt: str | None) -> dict:
    msgs = conversation.turns(_maybe_json_list(fields.need(row, "messages")), "messages")
    conversation.order(msgs, "messages")
    return {"messages": _with_system(msgs, system_prompt)}


def _sharegpt(row: dict, fields: _Fields, system_prompt: str | None) -> dict:
    msgs = conversation.turns(_maybe_json_list(fields.need(row, "conversations")), "conversations",
                          roles=SHAREGPT_ROLES, keys=("from", "value"))
    conversation.order(msgs, "conversations")
    return {"messages": _with_system(msgs, system_prompt)}


def _alpaca(row: dict, fields: _Fields, system_prompt: str | None) -> dict:
    instruction = conversation.text_field(fields.need(row, "instruction"), "instruction")
    extra = fields.get(row, "input")
    if extra is not None and not isinstance(extra, str):
        raise BadRow(f"wrong type: input must be a string, got {_json_type(extra)}")
    output = conversation.text_field(fields.need(row, "output"), "output")
    user = instruction + "\n\n" + extra if extra and extra.strip() else instruction
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return {"messages": _with_system(msgs, system_prompt)}


def _preference(row: dict, fields: _Fields, system_prompt: str | None) -> dict:
    chosen_v, rejected_v = fields.need(row, "chosen"), fields.need(row, "rejected")
    prompt_v = fields.get(row, "prompt")
    if prompt_v is None:  # whole dialogues: the shared prefix is the prompt
        chosen_d, rejected_d = _dialogue(chosen_v, "chosen"), _dialogue(rejected_v, "rejected")
        if chosen_d == rejected_d:
            raise BadRow("chosen and rejected are identical")
        prompt, chosen, rejected = _split_shared(chosen_d, rejected_d)
    else:
        if isinstance(prompt_v, str):
            prompt = [{"role": "user", "content": conversation.text_field(prompt_v, "prompt")}]
        else:
            _string_or_turns(prompt_v, "prompt")
            prompt = conversation.turns(prompt_v, "prompt")
        conversation.order(prompt, "prompt", ends_with="user")
        chosen, rejected = _answer(chosen_v, "chosen"), _answer(rejected_v, "rejected")
        if chosen == rejected:
            raise BadRow("chosen and rejected are identical")
        conversation.order(prompt + chosen, "prompt + chosen")
        conversation.order(prompt + rejected, "prompt + rejected")
    return {"prompt": _with_system(prompt, system_prompt), "chosen": chosen, "rejected": rejected}


def _answer(value: Any, name: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "assistant", "content": conversation.text_field(value, name)}]
    _string_or_turns(value, name)
    return conversation.turns(value, name)


def _string_or_turns(value: Any, name: str) -> None:
    if not isinstance(value, (str, list)):
        raise BadRow(f"wrong type: {name} must be a string or a list of turns, got {_json_type(value)}")


def _dialogue(value: Any, name: str) -> list[dict]:
    """A whole dialogue: a message list, or ``\\n\\nHuman: ... \\n\\nAssistant: ...`` text."""
    _string_or_turns(value, name)
    if not isinstance(value, str):
        return conversation.turns(value, name)
    parts = _DIALOGUE.split(value)
    if len(parts) < 3:
        raise BadRow(f"{name} is not a dialogue: with no prompt field, chosen and rejected must be whole "
                     "dialogues ('\\n\\nHuman: ... \\n\\nAssistant: ...') or message lists")
    if parts[0].strip():
        raise BadRow(f"{name} has text before its first Human:/Assistant: turn")
    msgs = []
    for i in range(1, len(parts), 2):
        role = "user" if parts[i] == "Human" else "assistant"
        content = parts[i + 1].strip()
        if not content:
            raise BadRow(f"empty content in {name} turn {len(msgs) + 1} ({parts[i]})")
        msgs.append({"role": role, "content": content})
    return msgs


def _split_shared(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """Split two whole dialogues into the shared prompt turns and their differing last assistant turns."""
    for name, d in (("chosen", chosen), ("rejected", rejected)):
        if d[-1]["role"] != "assistant":
            raise BadRow(f"{name} ends with {conversation.article(d[-1]['role'])} {d[-1]['role']} turn; "
                         "its last turn must be assistant")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared < len(chosen) - 1 or shared < len(rejected) - 1:
        raise BadRow(f"chosen and rejected differ before their last assistant turn (at turn {shared + 1}; "
                     f"{len(chosen)} vs {len(rejected)} turns); only the last assistant turn may differ")
    conversation.order(chosen, "chosen")
    conversation.order(rejected, "rejected")
    return chosen[:-1], chosen[-1:], rejected[-1:]
