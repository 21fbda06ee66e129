"""Reading rows from the user's files: .jsonl, .json, .csv, .parquet, each optionally .gz.

Every row comes with where it was found, so a bad one can be reported: the
1-based line in the file for JSON lines and CSV, ``"row N"`` (1-based) for a
JSON array or a parquet table. A row that cannot be read becomes a
:class:`BadRow` in place of the dict.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from typing import Any, Iterator, Union

from core.errors import ConfigError

Where = Union[int, str]
EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")


class BadRow(Exception):
    """One row is unusable; the message is the reason shown to the user."""


def file_type(path: str) -> tuple[str, bool]:
    """``(extension, gzipped)`` of a data file, e.g. ``('.jsonl', True)`` for ``x.jsonl.gz``.

    :raises ConfigError: the extension is not one anytune reads.
    """
    name = Path(path).name.lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    for ext in EXTENSIONS:
        if name.endswith(ext):
            return ext, gz
    if name.endswith(".ndjson"):
        return ".jsonl", gz
    raise ConfigError(f"cannot read {path}: unknown file type; use one of "
                      f"{', '.join(EXTENSIONS)} (each optionally .gz)")


def check_exists(path: str, field: str) -> None:
    """:raises ConfigError: ``path`` (the value of config ``field``) is not a readable file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{field}={path}: no such file (anytune reads local files: "
                          f"{', '.join(EXTENSIONS)}, each optionally .gz)")
    if not p.is_file():
        raise ConfigError(f"{field}={path}: not a file")
    file_type(path)


def iter_rows(path: str) -> Iterator[tuple[Where, Union[dict, BadRow]]]:
    """Every row of ``path`` in file order, with where it is; unreadable rows as :class:`BadRow`."""
    ext, gz = file_type(path)
    if ext == ".jsonl":
        yield from _json_lines(_open_binary(path, gz))
    elif ext == ".json":
        yield from _json(path, gz)
    elif ext == ".csv":
        yield from _csv(path, gz)
    else:
        yield from _parquet(path, gz)


def first_row(path: str) -> tuple[Where, dict] | None:
    """The first readable row of ``path`` (cheap: stops there), or None if it has none."""
    ext, gz = file_type(path)
    if ext == ".parquet":
        pq = _pyarrow(path)
        source = io.BytesIO(_open_binary(path, gz).read()) if gz else path
        for batch in pq.ParquetFile(source).iter_batches(batch_size=1):
            rows = batch.to_pylist()
            if rows:
                return "row 1", rows[0]
        return None
    rows = iter_rows(path)
    try:
        for where, row in rows:
            if isinstance(row, dict):
                return where, row
    finally:
        rows.close()
    return None


def first_problem(path: str) -> tuple[Where, str] | None:
    """Where the first unreadable row of ``path`` is and why (for a file with no readable row), or None."""
    rows = iter_rows(path)
    try:
        for where, row in rows:
            if isinstance(row, BadRow):
                return where, str(row)
    finally:
        rows.close()
    return None


def _open_binary(path: str, gz: bool):
    return gzip.open(path, "rb") if gz else open(path, "rb")


def _parse_object(raw: bytes | str) -> Union[dict, BadRow]:
    try:
        obj = json.loads(raw)
    except UnicodeDecodeError:
        return BadRow("not UTF-8 text")
    except json.JSONDecodeError as exc:
        return BadRow(f"malformed JSON: {exc.msg} (column {exc.colno})")
    except ValueError as exc:
        return BadRow(f"malformed JSON: {exc}")
    if not isinstance(obj, dict):
        return BadRow(f"wrong type: a row must be a JSON object, got {_json_type(obj)}")
    return obj


def _json_lines(f) -> Iterator[tuple[Where, Union[dict, BadRow]]]:
    with f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield n, _parse_object(line)


def _json(path: str, gz: bool) -> Iterator[tuple[Where, Union[dict, BadRow]]]:
    with _open_binary(path, gz) as f:
        raw = f.read()
    if raw.lstrip()[:1] != b"[":  # JSON lines in a .json file, unless it is one object over many lines
        body = raw.strip()
        if b"\n" in body and body[:1] == b"{" and isinstance(_parse_object(body), dict):
            yield 1, BadRow("the file is one JSON object; a .json file must hold a list of objects "
                            "or one object per line")
            return
        yield from _json_lines(io.BytesIO(raw))
        return
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        yield 1, BadRow("not UTF-8 text")
        return
    except json.JSONDecodeError as exc:
        yield exc.lineno, BadRow(f"malformed JSON: {exc.msg} (column {exc.colno}); the whole file is unreadable")
        return
    for i, obj in enumerate(data, 1):
        if isinstance(obj, dict):
            yield f"row {i}", obj
        else:
            yield f"row {i}", BadRow(f"wrong type: a row must be a JSON object, got {_json_type(obj)}")


def _csv(path: str, gz: bool) -> Iterator[tuple[Where, Union[dict, BadRow]]]:
    f = gzip.open(path, "rt", encoding="utf-8-sig", newline="") if gz else \
        open(path, encoding="utf-8-sig", newline="")
    with f:
        reader = csv.reader(f)
        header = None
        last = 0
        try:
            for values in reader:
                start, last = last + 1, reader.line_num
                if not values or (len(values) == 1 and not values[0].strip()):
                    continue
                if header is None:
                    header = values
                    continue
                if len(values) != len(header):
                    yield start, BadRow(f"has {len(values)} fields, the header has {len(header)}")
                    continue
                yield start, dict(zip(header, values))
        except UnicodeDecodeError:
            yield last + 1, BadRow("not UTF-8 text; the rest of the file is unreadable")
        except csv.Error as exc:
            yield last + 1, BadRow(f"malformed CSV: {exc}")


def _parquet(path: str, gz: bool) -> Iterator[tuple[Where, Union[dict, BadRow]]]:
    pq = _pyarrow(path)
    source = io.BytesIO(_open_binary(path, gz).read()) if gz else path
    try:
        table = pq.read_table(source)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise ConfigError(f"cannot read {path} as parquet: {exc}") from exc
    for i, row in enumerate(table.to_pylist(), 1):
        yield f"row {i}", row


def _pyarrow(path: str):
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigError(f"reading {path} needs pyarrow: pip install 'anytune[parquet]'") from exc
    return pq


def _json_type(obj: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(obj), type(obj).__name__)
