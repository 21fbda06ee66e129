"""The data layer: load the user's files, validate every row, normalise to canonical records, split, write.

Public API:

- :func:`detect_kind` — the canonical kind of ``data.train``, cheaply (before the full pass).
- :func:`check_method` — refuse a method that cannot train on that kind.
- :func:`prepare` — the full pass, writing ``train.jsonl``, ``eval.jsonl``, ``chat_template.jinja``
  and ``stats.json`` into the run's ``data/`` directory.

Formats read (``data.format``): messages, sharegpt, alpaca, prompt_completion, preference, text.
Kinds written: messages, prompt_completion, preference, text. See ``docs/data.md``.
"""
from core.data.formats import FIELDS as FORMATS
from core.data.formats import KIND as FORMAT_KIND
from core.data.prepare import METHOD_KINDS, check_method, detect_kind, prepare, split

KINDS = ("messages", "prompt_completion", "preference", "text")

__all__ = ["KINDS", "FORMATS", "FORMAT_KIND", "METHOD_KINDS", "detect_kind", "check_method", "prepare", "split"]
