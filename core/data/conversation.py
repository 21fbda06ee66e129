"""Checks on conversations: turn types, roles, content, training flags, tool calls and order.

Each check raises :class:`BadRow` with a reason a user can act on; the caller
adds the file and line.

A canonical turn is ``{"role": system|user|assistant|tool, "content": str}`` plus, where the
source says so: ``weight: 0`` (an assistant turn that carries no loss), ``train_spans`` (the
character ranges of an assistant turn's content that carry loss), ``tool_calls`` (an assistant
turn calling tools), ``tool_call_id`` and ``name`` (a tool turn's call and function).
"""
from __future__ import annotations

import json
import re
from typing import Any

from core.data.readers import BadRow, _json_type

ROLES = ("system", "user", "assistant", "tool")
#: Source roles that mean something else in the canonical form (OpenAI's legacy function role; its developer
#: role, which newer models take in place of system; LLaMA-Factory's observation and function_call roles in a
#: role/content ``messages`` column).
ROLE_ALIASES = {"function": "tool", "developer": "system", "observation": "tool", "function_call": "function_call"}
#: Placeholders multimodal data sets put in text (LLaMA-Factory, LLaVA): such rows are refused.
MEDIA_PLACEHOLDER = re.compile(r"<(image|video|audio)>")
#: Per-turn training flags: boolean keys and 0/1 keys (Axolotl ``train``/``training``; OpenAI ``weight``;
#: LLaMA-Factory ``loss_weight``).
BOOL_FLAGS = ("train", "training")
WEIGHT_FLAGS = ("weight", "loss_weight")
#: Axolotl's character-offset training detail (``end_offset`` inclusive).
DETAIL_KEYS = ("train_detail", "training_detail")
#: Turn keys that would change what the model sees or learns and that anytune cannot carry yet.
UNSUPPORTED_KEYS = {"reasoning_content": "reasoning_content (a separate reasoning field)",
                    "thinking": "thinking (a separate reasoning field)",
                    "audio": "audio", "refusal": "refusal"}


def text_field(value: Any, name: str) -> str:
    """``value`` as a non-empty string, else :class:`BadRow` naming ``name``."""
    if not isinstance(value, str):
        raise BadRow(f"wrong type: {name} must be a string, got {_json_type(value)}")
    if not value.strip():
        raise BadRow(f"empty {name}")
    no_media(value, name)
    return value


def no_media(text: str, name: str) -> None:
    """:raises BadRow: ``text`` holds an ``<image>``/``<video>``/``<audio>`` placeholder (multimodal data)."""
    found = MEDIA_PLACEHOLDER.search(text)
    if found:
        raise BadRow(f"{name} holds an {found.group(0)} placeholder: multimodal data ({found.group(1)}s) is not "
                     "supported, only text; anytune would train on the placeholder text")


def turns(value: Any, name: str, roles: dict[str, str] | None = None,
          keys: tuple[str, str] = ("role", "content")) -> list[dict[str, Any]]:
    """Canonical turns from a list of turns, checking each turn's type, role, content, flags and tool calls.

    :param roles: source role -> canonical role (default: the canonical roles and their aliases);
        ``function_call`` maps a LLaMA-Factory function-call turn (its content is the call as JSON).
    :param keys: the turn's role and content keys (``("from", "value")`` for ShareGPT).
    """
    if isinstance(value, str):
        raise BadRow(f"wrong type: {name} must be a list of turns, got a string")
    if not isinstance(value, list):
        raise BadRow(f"wrong type: {name} must be a list of turns, got {_json_type(value)}")
    if not value:
        raise BadRow(f"{name} has no turns")
    shown = tuple(roles) if roles else ROLES  # the roles an error message names (aliases are not advertised)
    roles = roles or {**{r: r for r in ROLES}, **ROLE_ALIASES}
    return [_turn(turn, f"{name} turn {i}", roles, keys, shown) for i, turn in enumerate(value, 1)]


def _turn(turn: Any, where: str, roles: dict[str, str], keys: tuple[str, str],
          shown: tuple[str, ...] = ROLES) -> dict[str, Any]:
    """One canonical turn (see the module docstring) from a source turn at ``where``."""
    role_key, content_key = keys
    if not isinstance(turn, dict):
        raise BadRow(f"wrong type: {where} must be an object, got {_json_type(turn)}")
    if role_key not in turn:
        raise BadRow(f"missing field '{role_key}' in {where}")
    raw_role = turn[role_key]
    if not isinstance(raw_role, str) or raw_role not in roles:
        raise BadRow(f"unknown role {raw_role!r} in {where} (allowed roles: {', '.join(shown)})")
    for key, what in UNSUPPORTED_KEYS.items():
        if turn.get(key) not in (None, "", []):
            raise BadRow(f"{where} has {what}, which anytune does not support yet (dropping it would train on "
                         "something other than the file says)")
    role = roles[raw_role]
    calls = None
    if role == "function_call":  # LLaMA-Factory: the assistant's call, as JSON text
        role, calls = "assistant", tool_calls(turn.get(content_key), f"{where} {content_key}")
        content, parts = "", None
    else:
        if "tool_calls" in turn or "function_call" in turn:
            if role != "assistant":
                raise BadRow(f"{where} is a {role} turn with tool calls; only assistant turns call tools")
            raw = turn.get("tool_calls") if turn.get("tool_calls") is not None else turn.get("function_call")
            calls = tool_calls(raw, f"{where} {'tool_calls' if 'tool_calls' in turn else 'function_call'}")
        if content_key not in turn and not calls:
            raise BadRow(f"missing field '{content_key}' in {where}")
        content, parts = _content(turn.get(content_key), f"{where} {content_key}")
        if not content.strip() and not calls:
            raise BadRow(f"empty content in {where} ({role})")
    out: dict[str, Any] = {"role": role, "content": content}
    if calls:
        out["tool_calls"] = calls
    if role == "tool":
        for key in ("tool_call_id", "name"):
            if isinstance(turn.get(key), str) and turn[key]:
                out[key] = turn[key]
    flag = _flag(turn, where)
    spans = _detail(turn, content, where) if parts is None else parts
    if role != "assistant":
        if flag or (spans is not None and spans != []):
            raise BadRow(f"{where} is a {role} turn marked for training; anytune trains on assistant turns only "
                         "(training on user, system or tool turns is not supported)")
        return out
    if flag is False or spans == []:
        out["weight"] = 0
    elif spans is not None and spans != [[0, len(content)]]:
        out["train_spans"] = spans
    return out


def _flag(turn: dict, where: str) -> bool | None:
    """The turn's own training flag: True, False or None (not given)."""
    flag = None
    for key in BOOL_FLAGS:
        if turn.get(key) is not None:
            if not isinstance(turn[key], bool):
                raise BadRow(f"wrong type: {where} {key} must be true or false, got {_json_type(turn[key])}")
            flag = turn[key]
    for key in WEIGHT_FLAGS:
        if turn.get(key) is not None:
            weight = _weight(turn[key], f"{where} {key}")
            if flag is not None and flag != weight:
                raise BadRow(f"{where} has contradictory training flags ({key}={turn[key]!r})")
            flag = weight
    return flag


def _weight(value: Any, where: str) -> bool:
    """A 0/1 weight as a training flag; fractional weights are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in (0, 1):
        raise BadRow(f"{where} must be 0 or 1, got {value!r} (fractional loss weights are not supported)")
    return value == 1


def _detail(turn: dict, content: str, where: str) -> list[list[int]] | None:
    """Axolotl's ``train_detail``: [{begin_offset, end_offset (inclusive), train}] -> trained spans."""
    key = next((k for k in DETAIL_KEYS if turn.get(k) is not None), None)
    if key is None:
        return None
    detail = turn[key]
    if not isinstance(detail, list):
        raise BadRow(f"wrong type: {where} {key} must be a list, got {_json_type(detail)}")
    spans = []
    for j, d in enumerate(detail, 1):
        if not isinstance(d, dict) or not all(isinstance(d.get(k), int) and not isinstance(d.get(k), bool)
                                              for k in ("begin_offset", "end_offset")) \
                or not isinstance(d.get("train"), bool):
            raise BadRow(f"{where} {key} item {j} must be {{begin_offset: int, end_offset: int, train: bool}}")
        a, b = d["begin_offset"], d["end_offset"] + 1
        if not 0 <= a < b <= len(content):
            raise BadRow(f"{where} {key} item {j} offsets {d['begin_offset']}..{d['end_offset']} lie outside its "
                         f"content ({len(content)} characters)")
        if d["train"]:
            spans.append([a, b])
    return merge(spans)


def merge(spans: list[list[int]]) -> list[list[int]]:
    """Sorted, non-overlapping spans covering the same characters."""
    out: list[list[int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _content(value: Any, where: str) -> tuple[str, list[list[int]] | None]:
    """Content as text and, when its parts carry training flags, the trained character spans.

    A list of text parts (OpenAI's ``{"type": "text", "text": ...}``; ``value`` or ``content`` as the text key,
    as LLaMA-Factory and Axolotl write them) is joined; a part's ``train``/``weight`` flag marks its characters.
    """
    if value is None:
        return "", None
    if isinstance(value, str):
        no_media(value, where)
        return value, None
    if not isinstance(value, list):
        raise BadRow(f"wrong type: {where} must be a string, got {_json_type(value)}")
    texts, spans, flagged, pos = [], [], False, 0
    for j, part in enumerate(value, 1):
        if not isinstance(part, dict):
            raise BadRow(f"wrong type: {where} part {j} must be an object, got {_json_type(part)}")
        kind = part.get("type", "text")
        if kind != "text":
            raise BadRow(f"{where} part {j} is of type {kind!r}; only text parts are supported "
                         f"(images, audio, files and separate reasoning parts are not)")
        text = next((part[k] for k in ("text", "value", "content") if k in part), None)
        if not isinstance(text, str):
            raise BadRow(f"wrong type: {where} part {j} must have a string 'text', got {_json_type(text)}")
        no_media(text, f"{where} part {j}")
        train = None
        if part.get("train") is not None:
            if not isinstance(part["train"], bool):
                raise BadRow(f"wrong type: {where} part {j} train must be true or false")
            train = part["train"]
        if part.get("weight") is not None:
            train = _weight(part["weight"], f"{where} part {j} weight")
        flagged = flagged or train is not None
        if train is not False and text:
            spans.append([pos, pos + len(text)])
        texts.append(text)
        pos += len(text)
    return "".join(texts), (merge(spans) if flagged else None)


def tool_calls(value: Any, where: str) -> list[dict[str, Any]]:
    """Canonical tool calls ``[{"type": "function", "function": {"name", "arguments": object}, "id"?}]``.

    Accepts OpenAI's ``tool_calls`` (arguments as JSON text or an object), a single legacy ``function_call``,
    and LLaMA-Factory's function-call turn (``{"name", "arguments"}`` as JSON text, or a list of them).
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise BadRow(f"{where} is not valid JSON; a tool call is {{\"name\": ..., \"arguments\": {{...}}}}") from None
    calls = value if isinstance(value, list) else [value]
    if not calls:
        raise BadRow(f"{where} is an empty list of tool calls")
    out = []
    for j, call in enumerate(calls, 1):
        if not isinstance(call, dict):
            raise BadRow(f"wrong type: {where} call {j} must be an object, got {_json_type(call)}")
        fn = call.get("function", call)
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise BadRow(f"{where} call {j} has no function name")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                raise BadRow(f"{where} call {j} ({fn['name']}) has arguments that are not valid JSON") from None
        if not isinstance(args, dict):
            raise BadRow(f"wrong type: {where} call {j} ({fn['name']}) arguments must be an object")
        entry: dict[str, Any] = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        out.append(entry)
    return out


def tools(value: Any, name: str) -> list[dict[str, Any]]:
    """The ``tools`` list of a row (JSON text as LLaMA-Factory stores it, or a list of function schemas)."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except ValueError:
            raise BadRow(f"{name} is not valid JSON") from None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise BadRow(f"wrong type: {name} must be a list of tool schemas, got {_json_type(value)}")
    for j, tool in enumerate(value, 1):
        if not isinstance(tool_name(tool), str):
            raise BadRow(f"{name} item {j} has no function name")
    return value


def tool_name(tool: dict) -> Any:
    """The function name of a tool schema (``{"type": "function", "function": {...}}`` or a bare schema)."""
    fn = tool.get("function", tool)
    return fn.get("name") if isinstance(fn, dict) else None


def order(msgs: list[dict[str, Any]], name: str, ends_with: str = "assistant") -> None:
    """Check the order of a conversation: system only first, then user and assistant alternating,
    starting with user and ending with ``ends_with``; tool turns only right after an assistant turn with
    tool calls (or another tool turn); at least one assistant turn when it ends with one."""
    roles = [m["role"] for m in msgs]
    for i, role in enumerate(roles[1:], 2):
        if role == "system":
            raise BadRow(f"misordered turns in {name}: system turn {i} is not the first turn")
    first = 2 if roles[0] == "system" else 1
    body = msgs[first - 1:]
    if not body:
        raise BadRow(f"{name} has only a system turn")
    if body[0]["role"] != "user":
        after = " after the system turn" if first == 2 else ""
        raise BadRow(f"misordered turns in {name}: turn {first} is {body[0]['role']}{after}; "
                     f"a conversation starts with a user turn")
    prev = None
    for i, m in enumerate(body):
        n, role = first + i, m["role"]
        if role == "tool":
            if prev not in ("call", "tool"):
                raise BadRow(f"misordered turns in {name}: tool turn {n} does not follow an assistant turn with "
                             "tool calls")
        elif prev == "call":
            raise BadRow(f"misordered turns in {name}: the assistant's tool calls in turn {n - 1} get no tool turn "
                         "with their result")
        elif role == prev or (role == "assistant" and prev == "call"):
            raise BadRow(f"misordered turns in {name}: two {role} turns in a row (turns {n - 1} and {n})")
        prev = "call" if m.get("tool_calls") else role
    if ends_with == "assistant" and not any(m["role"] == "assistant" for m in body):
        raise BadRow(f"no assistant turn in {name}")
    last = body[-1]["role"]
    if last != ends_with and not (ends_with == "user" and last == "tool"):
        raise BadRow(f"{name} ends with {article(last)} {last} turn; its last turn must be {ends_with}")


def article(word: str) -> str:
    """``a`` or ``an`` for ``word``."""
    return "an" if word == "assistant" else "a"


def plain(msgs: list[dict[str, Any]]) -> bool:
    """True when no turn carries a training flag (``weight``/``train_spans``), a tool call or a tool role."""
    return all(m["role"] != "tool" and not ({"weight", "train_spans", "tool_calls"} & m.keys()) for m in msgs)
