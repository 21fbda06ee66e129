"""Preference and unpaired (KTO) rows: the prompt wherever a published format keeps it, the answers, and whole
dialogues split at the turns they share. Canonical records:

- ``preference``: ``{"prompt": [turns...], "chosen": [assistant turn], "rejected": [assistant turn]}``
- ``unpaired``: ``{"prompt": [turns...], "completion": [assistant turn], "label": bool}``

Training flags, tools and tool calls are refused in both (they apply to SFT conversations only).
"""
from __future__ import annotations

import re
from typing import Any

from core.data import conversation
from core.data.rows import Fields, maybe_json_list, sharegpt_turns, system_column, user_text, with_system
from core.data.readers import BadRow, _json_type

_DIALOGUE = re.compile(r"(?:\A\s*|\n\n)(Human|Assistant):[ \t]?")


def _plain(msgs: list[dict], name: str) -> list[dict]:
    """Turns of preference and unpaired data: training flags, tools and tool calls are refused there."""
    for i, m in enumerate(msgs, 1):
        if "weight" in m or "train_spans" in m:
            raise BadRow(f"{name} turn {i} has a training flag (weight/train); per-turn loss flags apply to "
                         "SFT conversations only, not to preference or KTO data")
        if "tool_calls" in m or m["role"] == "tool":
            raise BadRow(f"{name} turn {i} has tool calls or a tool result; tool calling is supported in SFT "
                         "conversations only, not in preference or KTO data yet")
    return msgs


def preference(row: dict, fields: Fields, system_prompt: str | None) -> dict:
    """Preference rows of every published shape -> ``{prompt, chosen, rejected}``."""
    if _has_tools(row, fields):
        raise BadRow("the row has tools; tool calling is supported in SFT conversations only, not in "
                     "preference data yet")
    chosen_v, rejected_v = fields.need(row, "chosen"), fields.need(row, "rejected")
    prompt = _prompt_turns(row, fields)
    if prompt is None or _is_dialogue(chosen_v):  # whole dialogues: the shared prefix is the prompt
        chosen_d, rejected_d = _dialogue(chosen_v, "chosen"), _dialogue(rejected_v, "rejected")
        if chosen_d == rejected_d:
            raise BadRow("chosen and rejected are identical")
        shared, chosen, rejected = _split_shared(_plain(chosen_d, "chosen"), _plain(rejected_d, "rejected"))
        if prompt is not None and [m for m in prompt if m["role"] != "system"] != \
                [m for m in shared if m["role"] != "system"][-1:]:
            raise BadRow("the prompt field differs from the turns chosen and rejected share; give one or the other")
        system = [m for m in (prompt or []) if m["role"] == "system"]
        prompt = system + shared if system and shared[0]["role"] != "system" else shared
    else:
        _plain(prompt, "prompt")
        conversation.order(prompt, "prompt", ends_with="user")
        chosen, rejected = _answer(chosen_v, "chosen"), _answer(rejected_v, "rejected")
        if chosen == rejected:
            raise BadRow("chosen and rejected are identical")
        conversation.order(prompt + chosen, "prompt + chosen")
        conversation.order(prompt + rejected, "prompt + rejected")
    return {"prompt": with_system(prompt, system_prompt), "chosen": chosen, "rejected": rejected}


def _has_tools(row: dict, fields: Fields) -> bool:
    """True if the row carries a non-empty tools list."""
    value = fields.get(row, "tools")
    if value in (None, "", "[]", []) and isinstance(fields.get(row, "input"), dict):
        value = fields.get(row, "input").get("tools")  # OpenAI's preference format keeps them in input
    return value not in (None, "", "[]", [])


def _prompt_turns(row: dict, fields: Fields) -> list[dict] | None:
    """The prompt of a preference or unpaired row, wherever its format keeps it (None: no prompt field), with
    a ``system`` column as its first turn:

    - ``conversations`` (LLaMA-Factory's sharegpt DPO) or ``messages`` (Axolotl's chat_template DPO);
    - ``input: {"messages": [...]}`` (OpenAI's preference fine-tuning format);
    - ``instruction`` and ``input`` (alpaca ranking), or ``input`` alone (Axolotl's chatml.argilla);
    - ``prompt`` (or ``question``) as a string or a message list.
    """
    value = fields.get(row, "input")
    if isinstance(value, dict):
        if not isinstance(value.get("messages"), list):
            raise BadRow("input must hold the prompt's messages ({\"messages\": [...]}, OpenAI's preference format)")
        prompt = conversation.turns(value["messages"], "input messages")
    elif fields.has(row, "conversations"):
        prompt = sharegpt_turns(fields.get(row, "conversations"), "conversations")
    elif fields.has(row, "messages"):
        prompt = conversation.turns(maybe_json_list(fields.get(row, "messages")), "messages")
    elif fields.has(row, "instruction"):
        prompt = [{"role": "user", "content": user_text(row, fields)}]
    elif isinstance(value, str):
        prompt = [{"role": "user", "content": conversation.text_field(value, "input")}]
    elif fields.get(row, "prompt") is not None:
        prompt_v = fields.get(row, "prompt")
        if isinstance(prompt_v, str):
            prompt = [{"role": "user", "content": conversation.text_field(prompt_v, "prompt")}]
        else:
            _string_or_turns(prompt_v, "prompt")
            prompt = conversation.turns(prompt_v, "prompt")
    else:
        return None
    return system_column(row, fields, prompt, "the prompt")


def _is_dialogue(value: Any) -> bool:
    """True for a whole dialogue (a message list whose first turn is the user's or the system's)."""
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and \
        value[0].get("role", value[0].get("from")) in ("user", "system", "human")


def unpaired(row: dict, fields: Fields, system_prompt: str | None) -> dict:
    """KTO rows: a boolean label beside a prompt/completion pair (TRL, Axolotl) or a whole conversation
    (LLaMA-Factory), whose last assistant turn is the completion."""
    label = fields.need(row, "label")
    if not isinstance(label, bool):
        raise BadRow(f"wrong type: label must be true or false, got {_json_type(label)}")
    if _has_tools(row, fields):
        raise BadRow("the row has tools; tool calling is supported in SFT conversations only, not in KTO data yet")
    if not fields.has(row, "completion") and (fields.has(row, "messages") or fields.has(row, "conversations")):
        name = "messages" if fields.has(row, "messages") else "conversations"
        msgs = _plain(conversation.turns(maybe_json_list(fields.get(row, name)), name) if name == "messages"
                      else sharegpt_turns(fields.get(row, name), name), name)
        msgs = system_column(row, fields, msgs, name)
        conversation.order(msgs, name)
        prompt, completion = msgs[:-1], msgs[-1:]
    else:
        prompt = _prompt_turns(row, fields)
        if prompt is None:
            raise BadRow("missing field 'prompt' (or messages, instruction, input)")
        _plain(prompt, "prompt")
        completion = _plain(_answer(fields.need(row, "completion"), "completion"), "completion")
        conversation.order(prompt + completion, "prompt + completion")
    return {"prompt": with_system(prompt, system_prompt), "completion": completion, "label": label}


def _answer(value: Any, name: str) -> list[dict]:
    """An answer (a string, one turn, or a list of turns) as canonical turns without flags or tools."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": conversation.text_field(value, name)}]
    if isinstance(value, dict):  # one turn: sharegpt {from, value} or {role, content} (Axolotl's chat_template DPO)
        turns = sharegpt_turns([value], name)
    else:
        _string_or_turns(value, name)
        turns = conversation.turns(value, name)
    return _plain(turns, name)


def _string_or_turns(value: Any, name: str) -> None:
    """:raises BadRow: ``value`` is neither a string nor a list."""
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
