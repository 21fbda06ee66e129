"""The data report: what the prepared rows hold beyond their count (``stats.json``'s ``report``), and its text.

- ``row_kinds``: rows by what they carry: ``plain``, ``turn_weights`` (a turn without loss or with
  trained parts only), ``tool_calls`` (tools, tool calls or tool turns); ``desirable``/``undesirable``
  for unpaired (KTO) rows.
- ``duplicates``: rows identical to an earlier row of the same split; ``eval_in_train``: eval rows that
  are also training rows.
- ``empty_responses``: rows refused because an answer (assistant turn, completion, chosen or rejected) was
  empty; with ``data.on_bad_rows=skip`` they are dropped, and counted here.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any, Iterable


def row_kind(kind: str, record: dict) -> str:
    """What one canonical record carries (see the module's ``row_kinds``)."""
    if kind == "unpaired":
        return "desirable" if record["label"] else "undesirable"
    if kind != "messages":
        return "plain"
    msgs = record["messages"]
    if record.get("tools") or any(m["role"] == "tool" or "tool_calls" in m for m in msgs):
        return "tool_calls"
    if any("weight" in m or "train_spans" in m for m in msgs):
        return "turn_weights"
    return "plain"


def build(kind: str, splits: dict[str, list[dict]], problems: Iterable[tuple[str, Any, str]]) -> dict[str, Any]:
    """The report of the prepared records of each split (``{"train": [...], "eval": [...]}``) and the bad rows."""
    keys = {name: [json.dumps(r, sort_keys=True, ensure_ascii=False) for r in rows] for name, rows in splits.items()}
    out: dict[str, Any] = {"row_kinds": {}, "duplicates": {}}
    for name, rows in splits.items():
        out["row_kinds"][name] = dict(Counter(row_kind(kind, r) for r in rows)) if rows else None
        out["duplicates"][name] = len(keys[name]) - len(set(keys[name])) if rows else None
    train = set(keys.get("train", ()))
    out["eval_in_train"] = sum(k in train for k in keys.get("eval", ())) if splits.get("eval") else None
    out["empty_responses"] = sum(1 for _, _, why in problems if _empty_answer(why))
    return out


def _empty_answer(reason: str) -> bool:
    """True for a bad-row reason that says an answer was empty (not a question or a system prompt)."""
    return reason.startswith("empty") and any(w in reason for w in (
        "(assistant)", "(Assistant)", "completion", "chosen", "rejected", "output"))


def text(stats: dict[str, Any]) -> str:
    """A few lines a person reads: rows, kinds, token lengths, truncation, empty answers, duplicates."""
    rows, report = stats.get("rows") or {}, stats.get("report") or {}
    lines = [f"data: {stats.get('kind')} ({(stats.get('format') or {}).get('train')}), "
             f"{rows.get('train', 0)} train / {rows.get('eval', 0)} eval rows, "
             f"{(stats.get('skipped') or {}).get('count', 0)} skipped"]
    for split in ("train", "eval"):
        if not rows.get(split):
            continue
        tokens = (stats.get("tokens") or {}).get(split)
        kinds = (report.get("row_kinds") or {}).get(split) or {}
        parts = [", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))]
        if tokens:
            parts.append(f"tokens p50 {tokens.get('p50')} p90 {tokens.get('p90')} p99 {tokens.get('p99')} "
                         f"max {tokens['max']}")
            parts.append(f"{(stats.get('truncated') or {}).get(split, 0)} over max_length={stats.get('max_length')}")
        parts.append(f"{(report.get('duplicates') or {}).get(split) or 0} duplicate(s)")
        lines.append(f"  {split}: " + "; ".join(p for p in parts if p))
    extra = []
    if report.get("empty_responses"):
        extra.append(f"{report['empty_responses']} row(s) with an empty answer skipped")
    if report.get("eval_in_train"):
        extra.append(f"{report['eval_in_train']} eval row(s) also in train")
    if extra:
        lines.append("  " + "; ".join(extra))
    return "\n".join(lines)
