"""The data step of a job: detect the kind, check it fits the method, and prepare the run's ``data/``."""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

from core import chatrender, lossmask
from core.data import cache as datacache
from core.data import chat_template, formats, report, stats as tokstats
from core.data.readers import BadRow, check_exists, first_problem, first_row, iter_rows
from core.errors import ConfigError, DataError
from core.runproto import atomic_write_json, atomic_write_text

#: method -> canonical record kinds it trains on.
METHOD_KINDS = {"sft": ("messages", "prompt_completion", "text"), "dpo": ("preference",),
                "orpo": ("preference",), "kto": ("unpaired",)}
KIND_DESCRIPTION = {"messages": "messages (chat turns)", "prompt_completion": "prompt_completion (prompt/completion)",
                    "preference": "preference (prompt/chosen/rejected)",
                    "unpaired": "unpaired (prompt/completion with a boolean label, KTO)", "text": "text (plain text)"}
#: kinds rendered with the chat template of record.
TEMPLATED = ("messages", "preference", "unpaired")
#: bad-row reasons kept in stats.json.
REASONS_KEPT = 20


@dataclass
class _Options:
    train: str
    eval: str | None = None
    format: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    eval_fraction: float = 0.0
    max_rows: int | None = None
    on_bad_rows: str = "error"
    chat_template: str | None = None
    system_prompt: str | None = None


@dataclass
class _Row:
    where: Any
    record: dict
    texts: list[str] | None  # rendered training text(s), when already known
    prompt: str | None = None  # rendered prompt, when already known


def detect_kind(data_cfg) -> str:
    """Canonical kind of ``data.train`` (messages, prompt_completion, preference, text).

    Cheap: uses ``data.format`` when set, else reads only the first readable row.
    :raises ConfigError: missing file, unknown type, or a first row no format fits.
    """
    opts = _options(data_cfg)
    return formats.KIND[_format_of(opts.train, "data.train", opts)]


def check_method(kind: str, method_name: str, train: str | None = None) -> None:
    """:raises ConfigError: ``method_name`` cannot train on data of ``kind`` (``train``: the file, for the message)."""
    if method_name not in METHOD_KINDS:
        raise ConfigError.bad_value("method.name", method_name, list(METHOD_KINDS))
    needed = METHOD_KINDS[method_name]
    if kind in needed:
        return
    source = f"data.train={train}" if train else "the data"
    if needed == ("preference",):
        want, hint = "preference data (prompt/chosen/rejected)", "use method.name=sft, or preference data (e.g. data=demo_pref)"
    elif needed == ("unpaired",):
        want, hint = ("unpaired preference data (prompt/completion with a boolean label)",
                      "give rows with a boolean label, or use method.name=sft")
    else:
        want = "messages, prompt_completion or text data"
        hint = "use method.name=kto" if kind == "unpaired" else "use method.name=dpo or method.name=orpo"
    raise ConfigError(f"method.name={method_name} needs {want}; {source} is "
                      f"{KIND_DESCRIPTION.get(kind, kind)}; {hint}")


def prepare(data_cfg, *, method: str, model_path: str | None, out_dir: Path, max_length: int, seed: int,
            kind: str | None = None, templated: bool = True, cache: Path | None = None) -> dict[str, Any]:
    """Load, validate, normalise and split the data; write ``out_dir``; return the content of ``stats.json``.

    Writes ``train.jsonl``, ``eval.jsonl`` (when there is eval data), ``chat_template.jinja`` (messages and
    preference kinds, when ``templated``) and ``stats.json``, each atomically; stale ones are removed.

    :param model_path: local model directory (its chat template, special tokens and ``tokenizer.json``), or
        None: no token statistics, and conversations need ``data.chat_template``.
    :param kind: the kind :func:`detect_kind` returned, when the caller has already run it and
        :func:`check_method`; they are then not repeated (the file is only checked to still be of that kind).
    :param templated: False for a step that needs no template of record (a remote API that renders
        conversations itself): none is resolved, compiled or rendered, no ``chat_template.jinja`` is
        written, ``stats.json`` says ``"chat_template": null``, and conversations have no token statistics.
        Records are normalised and validated the same.
    :param cache: a cache folder (:func:`core.data.cache_dir`), or None for none. Identical inputs (the
        files' bytes, every data option, the template, method, seed, max_length, templated, the tokenizer)
        are then prepared once: a hit links or copies the stored files into ``out_dir``. ``stats.json``
        says ``"cache": "hit"`` or ``"miss"`` and ``"cache_key"``. ``ANYTUNE_DATA_CACHE=0`` turns it off.
    :raises DataError: bad rows and ``data.on_bad_rows=error``; lists every one with file and line (never cached).
    :raises ConfigError: the config cannot work (missing file, method/kind mismatch, no template, no rows).
    """
    started = time.perf_counter()
    opts = _options(data_cfg)
    out_dir = Path(out_dir)
    train_fmt = _format_of(opts.train, "data.train", opts)
    found = formats.KIND[train_fmt]
    if kind is None:
        check_method(found, method, opts.train)
    elif kind != found:
        raise ConfigError(f"data.train={opts.train} is {KIND_DESCRIPTION.get(found, found)} data, but it was "
                          f"{KIND_DESCRIPTION.get(kind, kind)} data when the job was validated; did the file change?")
    kind = found
    eval_fmt = None
    if opts.eval:
        eval_fmt = _format_of(opts.eval, "data.eval", opts)
        if formats.KIND[eval_fmt] != kind:
            raise ConfigError(f"data.eval={opts.eval} is {formats.KIND[eval_fmt]} data but "
                              f"data.train={opts.train} is {kind}; both must be the same kind")

    tmpl, tmpl_source = None, None
    specials = chat_template.special_tokens(model_path)
    if templated and kind in TEMPLATED:
        tmpl, tmpl_source = chat_template.resolve_with_source(opts.chat_template, model_path)
        if tmpl is None:
            where = (f"the model at {model_path} has no chat template" if model_path else
                     "the model is not a local directory, so its chat template cannot be read")
            raise ConfigError(f"{kind} data needs a chat template and {where}; set data.chat_template=chatml "
                              f"(or another built-in: {', '.join(chat_template.BUILTIN)}; or a .jinja path)")

    entry_key = None
    if cache is not None and datacache.enabled():
        entry_key = datacache.key({
            "train": datacache.file_identity(opts.train),
            "eval": datacache.file_identity(opts.eval) if opts.eval else None,
            "options": asdict(opts), "method": method, "seed": seed, "max_length": max_length,
            "templated": templated, "template": tmpl, "template_source": tmpl_source,
            "tokenizer": datacache.stat_identity(tokstats.tokenizer_file(model_path)), "special_tokens": specials})
        hit = datacache.load(Path(cache), entry_key, out_dir)
        if hit is not None:
            hit.update(cache="hit", cache_key=entry_key, seconds=round(time.perf_counter() - started, 3))
            atomic_write_json(str(out_dir / "stats.json"), hit)
            return hit

    render = None  # (messages, add_generation_prompt) -> text, as chat_template.render gives it
    if tmpl is not None:
        render = partial(chatrender.render, chat_template.compile_template(tmpl), special_tokens=specials)

    tokenizer = tokstats.load_tokenizer(model_path) if render is not None or kind not in TEMPLATED else None
    problems: list[tuple[str, Any, str]] = []
    prompts = tokenizer is not None and kind in TEMPLATED  # render prompts now, so a refusal is a bad row
    train = _load(opts.train, train_fmt, opts, kind, render, prompts, problems)
    evals = _load(opts.eval, eval_fmt, opts, kind, render, prompts, problems) if opts.eval else []
    if problems and opts.on_bad_rows == "error":
        raise DataError(problems)
    for name, path, rows in (("data.train", opts.train, train), ("data.eval", opts.eval, evals)):
        if path and not rows:
            first = f"; first: {problems[0][0]}:{problems[0][1]}: {problems[0][2]}" if problems else ""
            raise ConfigError(f"{name}={path} has no valid rows ({len(problems)} bad row(s) skipped{first})")

    eval_from = "data.eval" if opts.eval else None
    if not opts.eval and opts.eval_fraction > 0:
        train, evals = split(train, opts.eval_fraction, seed)
        eval_from = "eval_fraction" if evals else None
    if opts.max_rows is not None:
        train = train[:opts.max_rows]

    result: dict[str, Any] = {
        "kind": kind,
        "method": method,
        "format": {"train": train_fmt, "eval": eval_fmt or (train_fmt if evals else None)},
        "sources": {"train": str(Path(opts.train).resolve()),
                    "eval": str(Path(opts.eval).resolve()) if opts.eval else None},
        "columns": dict(opts.columns),
        "rows": {"train": len(train), "eval": len(evals)},
        "eval_from": eval_from,
        "skipped": {"count": len(problems),
                    "reasons": [{"file": f, "line": n, "reason": why} for f, n, why in problems[:REASONS_KEPT]]},
        "chat_template": {"source": tmpl_source, "file": "chat_template.jinja"} if tmpl else None,
        "system_prompt": opts.system_prompt,
        "max_length": max_length,
        **_token_stats(kind, {"train": train, "eval": evals}, tokenizer, model_path, specials, max_length),
        "report": report.build(kind, {"train": [r.record for r in train], "eval": [r.record for r in evals]},
                               problems),
    }

    out_dir.mkdir(parents=True, exist_ok=True)
    result["sha256"] = {"train": _write_jsonl(out_dir / "train.jsonl", train),
                        "eval": _write_jsonl(out_dir / "eval.jsonl", evals) if evals else None}
    if not evals:
        (out_dir / "eval.jsonl").unlink(missing_ok=True)
    if tmpl:
        atomic_write_text(str(out_dir / "chat_template.jinja"), tmpl)
    else:
        (out_dir / "chat_template.jinja").unlink(missing_ok=True)
    result["seconds"] = round(time.perf_counter() - started, 3)
    if entry_key is not None:
        datacache.store(Path(cache), entry_key, out_dir, result)
    result.update(cache="miss" if entry_key else None, cache_key=entry_key)
    atomic_write_json(str(out_dir / "stats.json"), result)
    return result


def split(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out ``round(len * fraction)`` rows (at least 1, leaving at least 1) chosen by a seeded shuffle.

    Both parts keep file order; the same rows, fraction and seed always give the same split.
    """
    n = len(rows)
    if n < 2:
        return rows, []
    k = min(max(1, round(n * fraction)), n - 1)
    held = set(random.Random(seed).sample(range(n), k))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def _options(data_cfg) -> _Options:
    def get(key, default=None):
        try:
            value = data_cfg.get(key, default) if hasattr(data_cfg, "get") else getattr(data_cfg, key, default)
        except Exception:  # omegaconf: a mandatory value that is missing
            return default
        return default if value == "???" else value

    train = get("train")
    if not train:
        raise ConfigError("data.train is not set: give a file, e.g. data.train=/path/to/train.jsonl")
    opts = _Options(train=str(train), eval=str(get("eval")) if get("eval") else None,
                    format=get("format") or "auto", columns=dict(get("columns") or {}),
                    eval_fraction=float(get("eval_fraction") or 0.0), max_rows=get("max_rows"),
                    on_bad_rows=get("on_bad_rows") or "error", chat_template=get("chat_template"),
                    system_prompt=get("system_prompt"))
    if opts.format != "auto" and opts.format not in formats.FIELDS:
        raise ConfigError.bad_value("data.format", opts.format, ["auto", *formats.FIELDS])
    if opts.on_bad_rows not in ("error", "skip"):
        raise ConfigError.bad_value("data.on_bad_rows", opts.on_bad_rows, ["error", "skip"])
    if not 0.0 <= opts.eval_fraction < 1.0:
        raise ConfigError(f"data.eval_fraction={opts.eval_fraction} must be at least 0 and below 1")
    if opts.max_rows is not None and int(opts.max_rows) < 1:
        raise ConfigError(f"data.max_rows={opts.max_rows} must be at least 1 (or null for all rows)")
    formats.check_columns(opts.columns, None if opts.format == "auto" else opts.format)
    return opts


def _format_of(path: str, field_name: str, opts: _Options) -> str:
    """The format of ``path``: ``data.format`` if set, else detected from its first readable row."""
    check_exists(path, field_name)
    if opts.format != "auto":
        return opts.format
    first = first_row(path)
    if first is None:
        problem = first_problem(path)
        if problem is not None:
            where, why = problem
            loc = f"line {where}" if isinstance(where, int) else where
            raise ConfigError(f"{field_name}={path} has no readable row; {loc}: {why}")
        raise ConfigError(f"{field_name}={path} has no rows")
    where, row = first
    fmt = formats.detect(row, opts.columns)
    if fmt is None:
        loc = f"line {where}" if isinstance(where, int) else where
        raise ConfigError(f"cannot tell the format of {field_name}={path}: its first row ({loc}) has fields "
                          f"{', '.join(map(str, row)) or 'none'}; formats and the fields that identify them: "
                          f"{formats.describe_formats()}; set data.format and map your columns with "
                          "data.columns, e.g. data.columns={prompt: question, completion: answer}")
    formats.check_columns(opts.columns, fmt)
    return fmt


def _load(path: str, fmt: str, opts: _Options, kind: str, render: Callable | None, prompts: bool,
          problems: list) -> list[_Row]:
    """Valid canonical rows of one file; bad rows are appended to ``problems`` as (file, line, reason).

    With ``render`` (conversation kinds), each row's training texts are rendered here, and its
    prompt too when ``prompts`` (token statistics will need it): a template that refuses either
    makes the row a bad row.
    """
    normalise = formats.normaliser(fmt, opts.columns, opts.system_prompt)
    template_error = _template_error() if render is not None else ()
    rows = []
    for where, raw in iter_rows(path):
        try:
            if isinstance(raw, BadRow):
                raise raw
            record = normalise(raw)
            texts = prompt = None
            if render is not None:
                try:
                    texts = tokstats.texts(kind, record, render, "")
                    if prompts:
                        prompt = tokstats.prompt_text(kind, record, render)
                    if kind == "messages":  # the loss spans every engine derives must exist
                        lossmask.loss_spans(kind, record, render, True)
                except template_error as exc:
                    raise BadRow(f"the chat template refused it: {exc}") from exc
                except ValueError as exc:
                    raise BadRow(f"no loss mask can be derived: {exc}") from exc
                except Exception as exc:  # a template may fail on data in other ways
                    raise BadRow(f"the chat template failed on it: {type(exc).__name__}: {exc}") from exc
                _check_tools_rendered(record, texts[0])
        except BadRow as bad:
            problems.append((path, where, str(bad)))
            continue
        rows.append(_Row(where, record, texts, prompt))
    return rows


def _check_tools_rendered(record: dict, text: str) -> None:
    """:raises BadRow: the template of record dropped a tool call or a tool schema of ``record`` (ChatML, for
    one, renders neither): the engines would train on a conversation without them."""
    names = [(f"tool call '{c['function']['name']}'", c["function"]["name"])
             for m in record.get("messages", ()) for c in m.get("tool_calls", ())]
    names += [(f"tool '{formats.conversation.tool_name(t)}'", formats.conversation.tool_name(t))
              for t in record.get("tools", ())]
    for what, name in names:
        if name not in text:
            raise BadRow(f"the chat template of record does not render tools or tool calls (it dropped the {what}): "
                         "set data.chat_template to a template that takes tools and tool_calls (most models' own "
                         "do; the built-ins do not), or drop the tool turns")


def _template_error() -> type:
    import jinja2

    return jinja2.TemplateError


def _token_stats(kind: str, splits: dict[str, list[_Row]], tokenizer, model_path: str | None,
                 specials: dict[str, str], max_length: int) -> dict[str, Any]:
    """tokens, truncated and prompt_fills_max_length of each split, all texts encoded in one batch.

    A prompt is encoded only when :func:`stats.token_bound` cannot rule out that it reaches
    ``max_length``; the others cannot fill it.
    """
    if tokenizer is None:
        return {"tokenizer": None, "tokens": None, "truncated": None, "prompt_fills_max_length": None}
    eos = specials.get("eos_token", "")
    bound = tokstats.token_bound(tokenizer)
    batch: list[list[str]] = []
    spans = {}
    for name, rows in splits.items():
        start = len(batch)
        batch.extend(r.texts if r.texts is not None else tokstats.texts(kind, r.record, None, eos) for r in rows)
        full = (start, len(batch))
        prompts = [r.prompt if r.prompt is not None else tokstats.prompt_text(kind, r.record, None) for r in rows]
        batch.extend([p] for p in prompts if p is not None and (bound is None or bound(p) >= max_length))
        spans[name] = (full, (full[1], len(batch)), any(p is not None for p in prompts))
    lengths = tokstats.token_lengths(tokenizer, batch)
    tokens, truncated, fills = {}, {}, {}
    for name, ((a, b), (c, d), has_prompts) in spans.items():
        summary = tokstats.summary(lengths[a:b], max_length) if b > a else None
        truncated[name] = summary.pop("truncated") if summary else None
        tokens[name] = summary
        fills[name] = sum(n >= max_length for n in lengths[c:d]) if has_prompts else (0 if b > a else None)
    return {"tokenizer": str(Path(model_path) / "tokenizer.json"), "tokens": tokens, "truncated": truncated,
            "prompt_fills_max_length": fills}


#: Characters some readers take for line breaks (str.splitlines); escaped so a record is always one line.
_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


#: ``json.dumps(obj, ensure_ascii=False)``, built once.
_ENCODE = json.JSONEncoder(ensure_ascii=False, check_circular=False).encode


def _write_jsonl(path: Path, rows: list[_Row]) -> str:
    """Write one record per line (UTF-8, atomically); return the file's sha256."""
    encode = _ENCODE
    text = "".join([encode(r.record) + "\n" for r in rows])
    for char, escaped in _LINE_BREAKS.items():
        if char in text:
            text = text.replace(char, escaped)
    atomic_write_text(str(path), text)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
