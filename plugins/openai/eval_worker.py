"""OpenAI evaluator worker: a hosted model's answers to the held-out conversations, scored.

Usage (from the run directory): ``python plan/eval-openai/openai_eval_worker.py plan/eval-openai/openai_eval.json``.
Imports only the ``openai`` client and the standard library (plus ``runproto``). Each conversation of
``data/eval.jsonl`` is cut before its last assistant turn; the model answers (temperature 0); scores:
exact_match and f1 (word overlap) averaged over rows, rows, and the tokens the API billed.
"""
from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runproto  # noqa: E402
import scores  # noqa: E402

SCORER, VERSION = "anytune.openai", "1"
"""Who computed the scores (eval.json's one schema, ``scores.py``)."""

WORD = re.compile(r"\w+", re.UNICODE)


def f1(answer, reference):
    """Word-overlap F1 of two texts (case-folded), 1.0 for two empty ones."""
    a, r = WORD.findall(answer.lower()), WORD.findall(reference.lower())
    if not a or not r:
        return float(a == r)
    common = sum((Counter(a) & Counter(r)).values())
    if not common:
        return 0.0
    p, q = common / len(a), common / len(r)
    return 2 * p * q / (p + q)


def prompt_and_reference(record):
    """The turns before the last assistant turn as the API takes them (training keys dropped, tool calls with
    ids and JSON arguments, each tool result linked to its call), and that turn's text."""
    msgs = record["messages"]
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    prompt, pending = [], []
    for i, m in enumerate(msgs[:last]):
        turn = {"role": m["role"], "content": m.get("content") or ""}
        if m.get("tool_calls"):
            calls = []
            for j, c in enumerate(m["tool_calls"]):
                cid = c.get("id") or f"call_{i}_{j}"
                pending.append(cid)
                calls.append({"id": cid, "type": "function",
                              "function": {"name": c["function"]["name"],
                                           "arguments": json.dumps(c["function"]["arguments"])}})
            turn["tool_calls"] = calls
        if m["role"] == "tool":
            cid = m.get("tool_call_id")
            turn["tool_call_id"] = cid if cid in pending else (pending[0] if pending else cid)
            if turn["tool_call_id"] in pending:
                pending.remove(turn["tool_call_id"])
        prompt.append(turn)
    return prompt, msgs[last].get("content") or ""


def model_of(spec):
    """The model to score: the plan's, or the fine-tuned model the trainer recorded in its state file."""
    if spec.get("model"):
        return spec["model"]
    state = runproto.read_json(spec["state"]) if spec.get("state") and os.path.isfile(spec["state"]) else {}
    if not state.get("fine_tuned_model"):
        raise RuntimeError(f"{spec.get('state')} names no fine-tuned model (the job did not succeed)")
    return state["fine_tuned_model"]


def score(spec):
    """Ask the model each held-out prompt; return the mean exact match and F1, rows, model, billed tokens."""
    from openai import OpenAI

    key = os.environ.get(spec["key_env"])
    if not key:
        raise RuntimeError(f"the API key variable {spec['key_env']} is not set")
    client = OpenAI(api_key=key, base_url=spec["base_url"], max_retries=spec["max_retries"])
    model = model_of(spec)
    records = runproto.read_jsonl(spec["eval"])[: spec["max_rows"] or None]
    exact, overlap, tokens = [], [], 0
    for record in records:
        prompt, reference = prompt_and_reference(record)
        reply = client.chat.completions.create(model=model, messages=prompt, temperature=0,
                                               max_completion_tokens=spec["max_tokens"], n=1)
        answer = reply.choices[0].message.content or ""
        exact.append(float(answer.strip() == reference.strip()))
        overlap.append(f1(answer, reference))
        tokens += reply.usage.total_tokens if reply.usage else 0
    print(f"scored {model} on {len(records)} row(s)", flush=True)
    return {"exact_match": scores.mean_score(exact, SCORER, VERSION),
            "f1": scores.mean_score(overlap, SCORER, VERSION)}, {"model": model, "billed_tokens": tokens}


def main(argv):
    """Score the model of ``argv[1]``; record the scores; exit 0, 1 (failed) or 130 (interrupted)."""
    spec = runproto.read_json(argv[1])
    outcome = runproto.Outcome(("openai",))
    with outcome as out:
        out["scores"], out["scored"] = score(spec)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
