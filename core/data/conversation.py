"""Checks on conversations: turn types, roles, content and order.

Each check raises :class:`BadRow` with a reason a user can act on; the caller
adds the file and line.
"""
from __future__ import annotations

from typing import Any

from core.data.readers import BadRow, _json_type

ROLES = ("system", "user", "assistant")


def text_field(value: Any, name: str) -> str:
    """``value`` as a non-empty string, else :class:`BadRow` naming ``name``."""
    if not isinstance(value, str):
        raise BadRow(f"wrong type: {name} must be a string, got {_json_type(value)}")
    if not value.strip():
        raise BadRow(f"empty {name}")
    return value


def turns(value: Any, name: str, roles: dict[str, str] | None = None,
          keys: tuple[str, str] = ("role", "content")) -> list[dict[str, str]]:
    """Canonical ``[{role, content}]`` from a list of turns, checking each turn's type, role and content.

    :param roles: source role -> canonical role (default: the canonical roles themselves).
    :param keys: the turn's role and content keys (``("from", "value")`` for ShareGPT).
    """
    if isinstance(value, str):
        raise BadRow(f"wrong type: {name} must be a list of turns, got a string")
    if not isinstance(value, list):
        raise BadRow(f"wrong type: {name} must be a list of turns, got {_json_type(value)}")
    if not value:
        raise BadRow(f"{name} has no turns")
    roles = roles or {r: r for r in ROLES}
    role_key, content_key = keys
    out = []
    for i, turn in enumerate(value, 1):
        if not isinstance(turn, dict):
            raise BadRow(f"wrong type: {name} turn {i} must be an object, got {_json_type(turn)}")
        if role_key not in turn:
            raise BadRow(f"missing field '{role_key}' in {name} turn {i}")
        role = turn[role_key]
        if role not in roles:
            raise BadRow(f"unknown role {role!r} in {name} turn {i} (allowed roles: {', '.join(roles)})")
        if content_key not in turn:
            raise BadRow(f"missing field '{content_key}' in {name} turn {i}")
        content = _content(turn[content_key], f"{name} turn {i} {content_key}")
        if not content.strip():
            raise BadRow(f"empty content in {name} turn {i} ({role})")
        out.append({"role": roles[role], "content": content})
    return out


def order(msgs: list[dict[str, str]], name: str, ends_with: str = "assistant") -> None:
    """Check the order of a conversation: system only first, then user and assistant alternating,
    starting with user and ending with ``ends_with``; at least one assistant turn when it ends with one."""
    roles = [m["role"] for m in msgs]
    for i, role in enumerate(roles[1:], 2):
        if role == "system":
            raise BadRow(f"misordered turns in {name}: system turn {i} is not the first turn")
    body = roles[1:] if roles[0] == "system" else roles
    first = 2 if roles[0] == "system" else 1
    if not body:
        raise BadRow(f"{name} has only a system turn")
    if body[0] != "user":
        after = " after the system turn" if first == 2 else ""
        raise BadRow(f"misordered turns in {name}: turn {first} is assistant{after}; "
                     f"a conversation starts with a user turn")
    for i in range(1, len(body)):
        if body[i] == body[i - 1]:
            raise BadRow(f"misordered turns in {name}: two {body[i]} turns in a row "
                         f"(turns {first + i - 1} and {first + i})")
    if ends_with == "assistant" and "assistant" not in body:
        raise BadRow(f"no assistant turn in {name}")
    if body[-1] != ends_with:
        raise BadRow(f"{name} ends with {article(body[-1])} {body[-1]} turn; its last turn must be {ends_with}")


def article(word: str) -> str:
    """``a`` or ``an`` for ``word``."""
    return "an" if word == "assistant" else "a"


def _content(value: Any, name: str) -> str:
    """Content as text; a list of text parts (OpenAI's content-part form) is joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    if isinstance(value, list):
        raise BadRow(f"wrong type: {name} must be a string or a list of text parts "
                     "(only text content is supported)")
    raise BadRow(f"wrong type: {name} must be a string, got {_json_type(value)}")
