"""docs/data.md's examples are true: each row under a ``### <format> -> kind `<kind>``` heading prepares as that
kind, and each row under "Refused formats and features" is refused with the message the page gives, with its
file and line."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from test_data_fidelity import TOOL_TEMPLATE, prepared, refused

PAGE = Path(__file__).resolve().parents[1] / "docs" / "data.md"
METHOD = {"messages": "sft", "prompt_completion": "sft", "text": "sft", "preference": "dpo", "unpaired": "kto"}


def sections() -> dict[str, str]:
    text = PAGE.read_text(encoding="utf-8")
    parts = re.split(r"^### (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1].split("\n## ")[0] for i in range(1, len(parts), 2)}


def read_examples() -> list[tuple[str, str, str]]:
    out = []
    for title, body in sections().items():
        kind = re.search(r"-> kind `(\w+)`", title)
        if kind:
            for block in re.findall(r"```json\n(.*?)```", body, flags=re.S):
                out += [(title, kind.group(1), line) for line in block.splitlines() if line.strip()]
    return out


def refused_examples() -> list[tuple[str, str]]:
    body = sections()["Refused formats and features"]
    return [(row.strip(), message) for row, message in re.findall(r"```json\n(.*?)```\n`(.+?)`", body, flags=re.S)]


def test_the_page_has_examples_of_every_kind_and_refusal():
    assert {k for _, k, _ in read_examples()} == set(METHOD)
    assert len(refused_examples()) >= 5


@pytest.mark.parametrize("title, kind, line", read_examples(), ids=lambda v: v[:40] if isinstance(v, str) else v)
def test_each_example_reads_as_stated(tmp_path, title, kind, line):
    path = tmp_path / "row.jsonl"
    path.write_text(line + "\n")
    extra = {}
    if "tool" in line:
        (tmp_path / "t.jinja").write_text(TOOL_TEMPLATE)
        extra["chat_template"] = str(tmp_path / "t.jinja")
    stats, [record] = prepared(tmp_path, path, METHOD[kind], **extra)
    assert stats["kind"] == kind, title
    assert json.dumps(record)


@pytest.mark.parametrize("line, message", refused_examples(), ids=lambda v: v[:40])
def test_each_refusal_is_as_stated(tmp_path, line, message):
    path = tmp_path / "row.jsonl"
    path.write_text(line + "\n")
    assert f"{path}:1: {message}" in refused(tmp_path, path)
