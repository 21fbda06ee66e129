"""Token counts of the API's training lines, offline: tiktoken with the o200k_base ranks shipped in ``data/``.

tiktoken downloads an encoding's ranks at first use; here they are read from the gzipped copy shipped with
the plugin (``data/NOTICE``), checked against the SHA-256 tiktoken itself expects, and given to tiktoken as
a cache entry (``TIKTOKEN_CACHE_DIR``, its documented offline mechanism). Every model of the price table
uses o200k_base. Counts follow OpenAI's cookbook for chat formats (3 tokens a message, 3 to prime the reply,
tool schemas and calls as their JSON text): an estimate, within a few per cent of what the API bills.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
ENCODING = "o200k_base"
RANKS = HERE / "data" / "o200k_base.tiktoken.gz"
SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
"""tiktoken's expected hash of the o200k_base ranks (tiktoken_ext/openai_public.py)."""
URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
"""Where tiktoken would fetch them from; its cache key is this URL's SHA-1 (nothing is fetched here)."""
PER_MESSAGE, PER_REPLY = 3, 3


class TokenizerMissing(RuntimeError):
    """tiktoken is not installed."""


def cache_dir() -> Path:
    """Where the decompressed ranks go: ``$ANYTUNE_HOME/cache/tiktoken`` (default ``~/.cache/anytune``)."""
    home = os.environ.get("ANYTUNE_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "anytune")
    return Path(home) / "cache" / "tiktoken"


@lru_cache(maxsize=1)
def encoding() -> Any:
    """tiktoken's o200k_base encoding, built from the shipped ranks without any network access.

    :raises TokenizerMissing: tiktoken is not installed (``pip install 'anytune[openai]'``).
    :raises ValueError: the shipped file does not have tiktoken's expected hash.
    """
    try:
        import tiktoken
    except ImportError:
        raise TokenizerMissing("backend=openai counts tokens with tiktoken before anything is uploaded; "
                               "install it with: pip install 'anytune[openai]'") from None
    folder = cache_dir()
    target = folder / hashlib.sha1(URL.encode()).hexdigest()
    if not target.is_file() or hashlib.sha256(target.read_bytes()).hexdigest() != SHA256:
        data = gzip.decompress(RANKS.read_bytes())
        if hashlib.sha256(data).hexdigest() != SHA256:
            raise ValueError(f"{RANKS} is not tiktoken's o200k_base (SHA-256 mismatch); reinstall anytune")
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    before = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)
    try:
        return tiktoken.get_encoding(ENCODING)
    finally:
        if before is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = before


def count_text(text: str) -> int:
    """Tokens of ``text`` (special-token strings counted as plain text)."""
    return len(encoding().encode(text, disallowed_special=()))


def count_messages(messages: list[dict], tools: list | None = None) -> int:
    """Tokens of a chat example: each message's role, content, name and tool calls, plus the framing."""
    total = PER_REPLY
    for m in messages:
        total += PER_MESSAGE + count_text(m["role"])
        if isinstance(m.get("content"), str):
            total += count_text(m["content"])
        for key in ("name", "tool_call_id"):
            if isinstance(m.get(key), str):
                total += count_text(m[key])
        for call in m.get("tool_calls") or ():
            total += count_text(call["function"]["name"]) + count_text(call["function"]["arguments"])
    if tools:
        total += count_text(json.dumps(tools, ensure_ascii=False))
    return total


def count_line(line: dict) -> int:
    """Tokens of one API training line: a supervised ``messages`` line, or a DPO line (the input with each
    output; both outputs are trained on)."""
    if "messages" in line:
        return count_messages(line["messages"], line.get("tools"))
    inp = line["input"]
    return sum(count_messages(inp["messages"] + out, inp.get("tools"))
               for out in (line["preferred_output"], line["non_preferred_output"]))


def longest_sequence(line: dict) -> int:
    """Tokens of the longest sequence the service trains on in one line (the model's limit applies to each):
    the conversation, or a DPO input with the longer of its two outputs."""
    if "messages" in line:
        return count_line(line)
    inp = line["input"]
    return max(count_messages(inp["messages"] + out, inp.get("tools"))
               for out in (line["preferred_output"], line["non_preferred_output"]))
