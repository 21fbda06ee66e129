"""The data layer: load the user's files, validate every row, normalise to canonical records, split, write.

Public API:

- :func:`detect_kind` — the canonical kind of ``data.train``, cheaply (before the full pass).
- :func:`check_method` — refuse a method that cannot train on that kind.
- :func:`prepare` — the full pass, writing ``train.jsonl``, ``eval.jsonl``, ``chat_template.jinja``
  and ``stats.json`` into the run's ``data/`` directory; with ``cache=``, identical inputs are
  prepared once (:mod:`core.data.cache`).
- :func:`cache_dir` — the default cache folder, ``$ANYTUNE_HOME/cache/data``.

Modules: ``readers`` (file types), ``formats`` (row formats -> canonical records; ``pairs``: preference
and unpaired rows; ``rows``: column mapping and shared turn builders),
``conversation`` (checks on turns: flags, tool calls, order), ``chat_template`` (the template of record:
resolve, render), ``stats`` (token counts), ``report`` (the data report), ``labels`` (the label view,
``python -m core.data show``), ``cache`` (the prepared-data cache), ``prepare`` (the pass itself).

Formats read (``data.format``): messages, sharegpt, alpaca, prompt_completion, prompt_completion_chat,
preference, unpaired, text. Kinds written: messages, prompt_completion, preference, unpaired, text.
See ``docs/data.md``.
"""
from core.data.cache import cache_dir
from core.data.formats import FIELDS as FORMATS
from core.data.formats import KIND as FORMAT_KIND
from core.data.prepare import METHOD_KINDS, check_method, detect_kind, prepare, split

KINDS = ("messages", "prompt_completion", "preference", "unpaired", "text")

__all__ = ["KINDS", "FORMATS", "FORMAT_KIND", "METHOD_KINDS", "cache_dir", "detect_kind", "check_method", "prepare",
           "split"]
