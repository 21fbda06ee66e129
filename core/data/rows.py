"""Reading a row's fields: ``data.columns`` mapping and the other spellings of canonical fields, and the turn
builders that row formats share (ShareGPT turns, alpaca's user turn, a system column, the system prompt)."""
from __future__ import annotations

import json
from typing import Any

from core.data import conversation
from core.data.readers import BadRow, _json_type

#: ShareGPT's ``from`` values -> canonical roles (LLaMA-Factory's function_call and observation included).
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "observation": "tool", "tool": "tool", "function_call": "function_call"}
#: Other spellings of canonical fields, read when the canonical name is absent and nothing maps it.
ALIASES = {"chosen": ("chosen_messages", "chosen_response", "preferred_output"),
           "rejected": ("rejected_messages", "rejected_response", "non_preferred_output"),
           "label": ("kto_tag",), "tools": ("functions",), "prompt": ("question",)}


class Fields:
    """Looks canonical fields up in a row through ``data.columns``.

    A column that a mapping reads is not read again under its own name: with ``{instruction: input}``
    the canonical ``input`` is absent (unless it is mapped too), never the same column a second time.
    """

    def __init__(self, columns: dict[str, str]):
        """:param columns: ``data.columns`` (canonical field -> column)."""
        self.columns = columns
        self.claimed = set(columns.values())

    def col(self, field: str) -> str | None:
        """The column that holds ``field``, or None when its own name is claimed by another mapping."""
        if field in self.columns:
            return self.columns[field]
        return None if field in self.claimed else field

    def _find(self, row: dict, field: str) -> str | None:
        """The column of ``row`` holding ``field`` (mapped, own name, or an alias), or None."""
        col = self.col(field)
        if col is not None and col in row:
            return col
        if field not in self.columns:
            return next((a for a in ALIASES.get(field, ()) if a in row and a not in self.claimed), None)
        return None

    def has(self, row: dict, field: str) -> bool:
        """True if ``row`` holds ``field``."""
        return self._find(row, field) is not None

    def need(self, row: dict, field: str) -> Any:
        """``field``'s value in ``row``; :class:`BadRow` naming the column when it is missing."""
        col = self._find(row, field)
        if col is None:
            col = self.col(field) or field
            mapped = f" (data.columns.{field})" if col != field else ""
            raise BadRow(f"missing field '{col}'{mapped}")
        return row[col]

    def get(self, row: dict, field: str) -> Any:
        """``field``'s value in ``row``, or None."""
        col = self._find(row, field)
        return row[col] if col is not None else None


def with_system(msgs: list[dict], system_prompt: str | None) -> list[dict]:
    """``data.system_prompt`` as the first turn, unless the conversation starts with one."""
    if system_prompt and msgs[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}] + msgs
    return msgs


def maybe_json_list(value: Any) -> Any:
    """A list stored as JSON text (a CSV cell) becomes the list."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def system_column(row: dict, fields: Fields, msgs: list[dict], name: str) -> list[dict]:
    """A ``system`` column (LLaMA-Factory's sharegpt and alpaca) becomes the first turn."""
    value = fields.get(row, "system")
    if value in (None, ""):
        return msgs
    text = conversation.text_field(value, "system")
    if msgs[0]["role"] == "system":
        raise BadRow(f"both a system column and a system turn in {name}")
    return [{"role": "system", "content": text}] + msgs


def sharegpt_turns(value: Any, name: str) -> list[dict]:
    """ShareGPT turns (``from``/``value``); Axolotl's ``role``/``content`` spelling in a conversations column too."""
    value = maybe_json_list(value)
    if isinstance(value, list) and value and isinstance(value[0], dict) and "from" not in value[0] \
            and "role" in value[0]:
        return conversation.turns(value, name)
    return conversation.turns(value, name, roles=SHAREGPT_ROLES, keys=("from", "value"))


def user_text(row: dict, fields: Fields) -> str:
    """Alpaca's user turn: ``instruction``, then ``input`` after a blank line when non-empty."""
    instruction = conversation.text_field(fields.need(row, "instruction"), "instruction")
    extra = fields.get(row, "input")
    if extra is not None and not isinstance(extra, str):
        raise BadRow(f"wrong type: input must be a string, got {_json_type(extra)}")
    if extra:
        conversation.no_media(extra, "input")
    return instruction + "\n\n" + extra if extra and extra.strip() else instruction
