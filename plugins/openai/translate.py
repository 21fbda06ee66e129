"""Translation of the canonical job into the OpenAI fine-tuning API's terms: plain dicts, no client import.

- :func:`api_line`: one canonical record -> one line of the API's training file (supervised chat
  ``messages`` with ``weight`` on assistant turns and ``tools``; DPO ``input`` / ``preferred_output`` /
  ``non_preferred_output``), or :class:`BadLine` saying what the API would reject.
- :func:`api_files`: every record of a prepared file, each line checked (roles, keys, an assistant turn,
  the model's token limit) and counted; the bad ones listed with file and row.
- :func:`job_payload`: the job-creation request (model, method, hyperparameters, seed, suffix, files).
- :func:`estimate`: the cost from the dated price table (``prices.py``).
"""
from __future__ import annotations

import json
from typing import Any, Iterable

from omegaconf import OmegaConf

from plugins.openai import prices

METHODS = {"sft": "supervised", "dpo": "dpo"}
"""canonical method.name -> the API's ``method.type``."""
ROLES = ("system", "user", "assistant", "tool")
"""Roles the API's chat training lines take (the canonical roles; ``developer`` arrives as ``system``)."""
TURN_KEYS = {"system": {"role", "content", "name"}, "user": {"role", "content", "name"},
             "assistant": {"role", "content", "name", "tool_calls", "weight"},
             "tool": {"role", "content", "tool_call_id"}}
"""Keys the API takes on a turn of each role (its ChatCompletionRequest*Message schemas, plus ``weight``)."""
MAX_LISTED = 20
"""Bad rows listed in one error."""


class BadLine(ValueError):
    """A record the API would reject; the message says why (the caller adds file and row)."""


def _calls(calls: list[dict], ids: list[str], row: int, turn: int) -> list[dict]:
    """Canonical tool calls as the API writes them: an id each (kept, or made up), arguments as JSON text."""
    out = []
    for j, call in enumerate(calls, 1):
        cid = call.get("id") or f"call_{row}_{turn}_{j}"
        ids.append(cid)
        out.append({"id": cid, "type": "function",
                    "function": {"name": call["function"]["name"],
                                 "arguments": json.dumps(call["function"]["arguments"], ensure_ascii=False)}})
    return out


def _turns(msgs: list[dict], row: int, trainable: bool) -> list[dict]:
    """Canonical turns as API messages: ``weight`` 0/1 on assistant turns (from the per-turn loss flags) when
    ``trainable``; tool turns linked to their call's id in order.

    :raises BadLine: a role the API does not take, a partly trained turn (``train_spans``), a tool turn
        without a call to answer.
    """
    out: list[dict] = []
    pending: list[str] = []  # ids of calls not yet answered, in order
    for i, m in enumerate(msgs, 1):
        role = m.get("role")
        if role not in ROLES:
            raise BadLine(f"turn {i} has role {role!r}; the API takes {', '.join(ROLES)}")
        if "train_spans" in m:
            raise BadLine(f"turn {i} trains on part of its content only (train_spans); the API's weight is per "
                          "turn (0 or 1): split the turn or train on all of it")
        turn: dict[str, Any] = {"role": role, "content": m.get("content", "")}
        if role == "assistant":
            if m.get("tool_calls"):
                turn["tool_calls"] = _calls(m["tool_calls"], pending, row, i)
                if not turn["content"]:
                    turn["content"] = None
            if trainable:
                turn["weight"] = 0 if m.get("weight") == 0 else 1
        elif role == "tool":
            cid = m.get("tool_call_id")
            if cid in pending:
                pending.remove(cid)
            elif pending:
                cid = pending.pop(0)
            else:
                raise BadLine(f"turn {i} is a tool result that answers no tool call")
            turn["tool_call_id"] = cid
        elif isinstance(m.get("name"), str) and m["name"]:
            turn["name"] = m["name"]
        unknown = set(turn) - TURN_KEYS[role]
        if unknown:  # a key the API does not take
            raise BadLine(f"turn {i} ({role}) has {', '.join(sorted(unknown))}, which the API does not take")
        out.append(turn)
    return out


def api_line(kind: str, record: dict, row: int) -> dict:
    """One canonical record as a line of the API's training file.

    :param kind: the record kind: messages (supervised) or preference (DPO).
    :param row: the record's 1-based row (it names made-up tool-call ids).
    :raises BadLine: what the API would reject in it.
    """
    if kind == "messages":
        msgs = _turns(record["messages"], row, trainable=True)
        if not any(m["role"] == "assistant" for m in msgs):
            raise BadLine("it has no assistant turn (the API trains on assistant turns)")
        if not any(m.get("weight", 1) == 1 for m in msgs if m["role"] == "assistant"):
            raise BadLine("every assistant turn has weight 0: nothing would be trained")
        line: dict[str, Any] = {"messages": msgs}
        if record.get("tools"):
            line["tools"] = record["tools"]
        return line
    if kind == "preference":
        prompt = _turns(record["prompt"], row, trainable=False)
        if not prompt or prompt[-1]["role"] not in ("user", "tool"):
            raise BadLine("its prompt does not end with a user turn (the API's DPO input asks for a reply)")
        outs = []
        for name in ("chosen", "rejected"):
            turns = _turns(record[name], row, trainable=False)
            if len(turns) != 1 or turns[0]["role"] != "assistant":
                raise BadLine(f"{name} must be exactly one assistant message (the API's "
                              f"{'preferred' if name == 'chosen' else 'non_preferred'}_output); it has "
                              f"{len(turns)} turn(s)")
            outs.append(turns)
        inp: dict[str, Any] = {"messages": prompt}
        if record.get("tools"):
            inp["tools"] = record["tools"]
        return {"input": inp, "preferred_output": outs[0], "non_preferred_output": outs[1]}
    raise BadLine(f"records of kind {kind!r} have no form in the API (it takes chat messages and DPO pairs)")


def api_files(kind: str, records: Iterable[dict], name: str, max_tokens: int, count: Any,
              longest: Any = None) -> tuple[list[dict], list[int], list[str]]:
    """Every record of one prepared file as API lines, checked and counted.

    :param name: the file as errors name it (``data/train.jsonl``).
    :param max_tokens: the model's longest example; a line with a longer sequence is a bad row.
    :param count: ``count(line) -> tokens`` billed (``tokens.count_line``).
    :param longest: ``longest(line) -> tokens`` of its longest sequence (``tokens.longest_sequence``);
        None: ``count``.
    :returns: (lines, tokens of each line, bad rows: ``"<name> row N: why"``).
    """
    lines, counts, bad = [], [], []
    for row, record in enumerate(records, 1):
        try:
            line = api_line(kind, record, row)
            n = count(line)
            seq = n if longest is None else longest(line)
            if seq > max_tokens:
                raise BadLine(f"it has {seq} tokens; the model's training examples hold at most {max_tokens}")
        except BadLine as exc:
            bad.append(f"{name} row {row}: {exc}")
            continue
        lines.append(line)
        counts.append(n)
    return lines, counts, bad


def bad_rows_message(bad: list[str], source: str) -> str:
    """The error listing bad rows (at most :data:`MAX_LISTED`), before anything is uploaded."""
    shown = "\n".join(f"  {b}" for b in bad[:MAX_LISTED])
    more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    return (f"{len(bad)} row(s) the OpenAI fine-tuning API would reject (nothing was uploaded; rows of the "
            f"prepared file, normalised from {source}):\n{shown}{more}")


def hyperparameters(job: Any) -> dict[str, Any]:
    """The method's hyperparameters: n_epochs (train.epochs), batch_size (train.batch_size),
    learning_rate_multiplier (backend.learning_rate_multiplier, or the API's ``auto``), beta (method.beta, DPO)."""
    b = job.backend
    hp: dict[str, Any] = {"n_epochs": int(job.train.epochs), "batch_size": int(job.train.batch_size),
                          "learning_rate_multiplier": b.learning_rate_multiplier
                          if b.learning_rate_multiplier is not None else "auto"}
    if job.method.name == "dpo":
        hp["beta"] = float(job.method.beta)
    return hp


def deep_merge(base: dict, extra: dict) -> dict:
    """``base`` with ``extra``'s keys put in, nested dicts merged (``backend.native`` into the payload)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def job_payload(job: Any, training_file: str = "<uploaded data/openai_train.jsonl>",
                validation_file: str | None = None) -> dict[str, Any]:
    """The job-creation request: model, files, ``method`` with its hyperparameters, seed, suffix, metadata;
    then ``backend.native`` merged in (the escape hatch: any key the API takes)."""
    mtype = METHODS[job.method.name]
    payload: dict[str, Any] = {
        "model": str(job.model.name_or_path),
        "training_file": training_file,
        "method": {"type": mtype, mtype: {"hyperparameters": hyperparameters(job)}},
        "seed": int(job.train.seed),
        "metadata": {"anytune_run": "true"},
    }
    if validation_file:
        payload["validation_file"] = validation_file
    if job.backend.suffix:
        payload["suffix"] = str(job.backend.suffix)
    native = OmegaConf.to_container(job.backend.native, resolve=True) if job.backend.get("native") else {}
    return deep_merge(payload, native)


def estimate(model: str, train_tokens: int, epochs: int, price: float | None) -> dict[str, Any]:
    """The training cost: price per 1M tokens x training-file tokens x epochs (validation is not billed).

    :param price: ``backend.price_per_1m_tokens``, or None: the dated table's price for ``model``.
    """
    entry = prices.model_of(model)
    usd = price if price is not None else entry.usd_per_1m_training_tokens if entry else None
    billed = train_tokens * epochs
    return {"model": model, "training_file_tokens": train_tokens, "epochs": epochs, "billed_tokens": billed,
            "usd_per_1m_tokens": usd, "price_source": "backend.price_per_1m_tokens" if price is not None
            else f"plugins/openai/prices.py, as of {prices.PRICES_AS_OF}",
            "usd": round(billed * usd / 1e6, 4) if usd is not None else None}
