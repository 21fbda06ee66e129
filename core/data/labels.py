"""The label view: the prepared rows as the engines see them, token by token, with the tokens that carry loss.

Built from a run directory's own files (``data/*.jsonl``, ``data/chat_template.jinja``, ``data/stats.json``
and ``config.yaml``), with the model's ``tokenizer.json`` (``tokenizers``), :mod:`core.chatrender` and
:mod:`core.lossmask`: the text, tokens and mask every local engine trains on (TRL's worker and torchtune's
components make them with the same two modules; ``tests/test_data_labels.py`` checks both). Conversations
are rendered with the template of record; rows longer than ``train.max_length`` are cut there, as the
engines cut them. Preference and unpaired rows show each answer after its prompt, the answer carrying loss.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from core import chatrender, lossmask
from core.errors import ConfigError

SFT_KINDS = ("messages", "prompt_completion", "text")
PLAIN_OPEN, PLAIN_CLOSE = "[[", "]]"
"""Markers around the text that carries loss when the output is not a terminal (no colour)."""


@dataclass
class Sequence:
    """One token sequence of a row (a row of preference data has two: chosen and rejected)."""

    name: str
    """``""`` for an SFT row, else ``chosen``, ``rejected`` or ``completion``."""
    ids: list[int]
    """Token ids, cut at ``max_length``."""
    mask: list[int]
    """1 where the token carries loss."""
    pieces: list[str]
    """Each token's text (from its first character to the next token's)."""
    length: int
    """Tokens before the cut."""
    max_length: int
    """``train.max_length``: where engines cut the row."""

    @property
    def truncated(self) -> bool:
        """True when the row is longer than ``max_length``."""
        return self.length > self.max_length


@dataclass
class Row:
    """One prepared record and its sequences."""

    index: int
    """1-based position in the split's file."""
    record: dict
    sequences: list[Sequence]


def label_rows(run_dir: str | Path, split: str = "train", rows: int | None = None) -> list[Row]:
    """The first ``rows`` records of ``data/<split>.jsonl`` of a run directory, tokenised and masked.

    :raises ConfigError: the run directory has no prepared data of ``split``, or no local tokenizer.
    """
    run_dir = Path(run_dir)
    data = run_dir / "data"
    path = data / f"{split}.jsonl"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: give a run directory whose data is prepared (python -m core "
                          f"... plan_only=true makes one){'; this run has no eval data' if split == 'eval' else ''}")
    stats = json.loads((data / "stats.json").read_text(encoding="utf-8"))
    if not stats.get("tokenizer"):
        raise ConfigError(f"{run_dir} was prepared without a local tokenizer (a remote backend, or a hub model "
                          "offline), so its tokens are not known here")
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run_dir / "config.yaml")
    model_dir = str(Path(stats["tokenizer"]).parent)
    kind, max_length = stats["kind"], int(stats["max_length"])
    completion_only = bool(cfg.method.get("completion_only_loss", True)) if cfg.method.name == "sft" else True
    specials = chatrender.special_tokens(model_dir)
    render = None
    template = data / "chat_template.jinja"
    if template.is_file():
        render = partial(chatrender.render, chatrender.environment().from_string(template.read_text("utf-8")),
                         special_tokens=specials)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(stats["tokenizer"])
    tok.no_truncation()
    tok.no_padding()
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if rows is not None and i > rows:
                break
            rec = json.loads(line)
            out.append(Row(i, rec, [_sequence(tok, name, text, spans, max_length)
                                    for name, text, spans in _texts(kind, rec, render, completion_only,
                                                                    specials.get("eos_token", ""))]))
    return out


def _texts(kind: str, rec: dict, render, completion_only: bool, eos: str) -> list[tuple[str, str, list]]:
    """(name, text, loss spans) of each sequence of one record."""
    if kind in SFT_KINDS:
        text, spans = lossmask.loss_spans(kind, rec, render, completion_only, eos=eos)
        return [("", text, spans)]
    sides = ("chosen", "rejected") if kind == "preference" else ("completion",)
    start = len(render(rec["prompt"], True))
    out = []
    for side in sides:
        text = render(rec["prompt"] + rec[side], False)
        out.append((side if kind == "preference" else f"completion (label {str(rec['label']).lower()})",
                    text, [(start, len(text))]))
    return out


def _sequence(tok, name: str, text: str, spans: list, max_length: int) -> Sequence:
    """Tokens, mask and token texts of one rendered text, cut at ``max_length``."""
    enc = tok.encode(text, add_special_tokens=False)
    offsets = list(enc.offsets)
    mask = lossmask.mask_from_offsets(offsets, spans)
    starts = [a for a, _ in offsets] + [len(text)]
    pieces = [text[starts[i]:starts[i + 1]] for i in range(len(offsets))]
    if offsets and offsets[0][0] > 0:
        pieces[0] = text[:offsets[0][0]] + pieces[0]
    n = len(enc.ids)
    return Sequence(name, list(enc.ids)[:max_length], mask[:max_length], pieces[:max_length], n, max_length)


def show(rows: list[Row], console: Any = None) -> None:
    """Print rows: loss-carrying tokens in green on a terminal, else between ``[[`` and ``]]``; each sequence's
    token count, loss tokens and where ``max_length`` cuts it."""
    from rich.console import Console
    from rich.text import Text

    console = console or Console(highlight=False)
    colour = console.is_terminal and not console.no_color
    for row in rows:
        for seq in row.sequences:
            loss = sum(seq.mask)
            head = f"row {row.index}{' ' + seq.name if seq.name else ''}: {seq.length} tokens, {loss} carry loss"
            head += (f"; cut at train.max_length={seq.max_length} ({seq.length - seq.max_length} tokens dropped)"
                     if seq.truncated else f"; not truncated (max_length={seq.max_length})")
            console.print(Text(f"── {head}", style="bold") if colour else f"-- {head}", markup=False, soft_wrap=True)
            body = Text()
            if colour:
                for piece, m in zip(seq.pieces, seq.mask):
                    body.append(piece, style="black on green" if m else "dim")
            else:
                body.append(plain(seq.pieces, seq.mask))
            if seq.truncated:
                body.append("\n✂ [truncated here]" if colour else "\n-- truncated here --",
                            style="bold red" if colour else None)
            console.print(body, markup=False, soft_wrap=True)


def plain(pieces: list[str], mask: list[int]) -> str:
    """The text with each run of loss-carrying tokens between :data:`PLAIN_OPEN` and :data:`PLAIN_CLOSE`."""
    out, inside = [], False
    for piece, m in zip(pieces, mask):
        if m and not inside:
            out.append(PLAIN_OPEN)
        elif not m and inside:
            out.append(PLAIN_CLOSE)
        inside = bool(m)
        out.append(piece)
    if inside:
        out.append(PLAIN_CLOSE)
    return "".join(out)
