"""Generation evaluator worker: greedy answers to rows, extracted and compared with their references.

Usage (from the run directory): ``python plan/eval-gsm8k/generate_worker.py plan/eval-gsm8k/gsm8k.json``.
Imports only transformers, peft, torch, tqdm (a transformers dependency) and the standard library (plus
``heldout_worker``, ``runproto``, ``lossmask``, ``hfglue`` and ``scores``, shipped beside this file), so an
ejected plan runs where anytune is not installed. Prompts are rendered with the chat template of record and a
generation prompt, left-padded in batches, answered greedily up to the end-of-turn token; every answer goes
to ``artifacts/eval/<name>.jsonl``; the score goes to the outcome. Exits 0, 1 or 130.
"""
from __future__ import annotations

import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import heldout_worker  # noqa: E402
import hfglue  # noqa: E402
import runproto  # noqa: E402
import scores  # noqa: E402

SCORER, VERSION = "anytune.generate", "1"
"""Name and version of this scorer in ``eval.json`` (the version changes when extraction or comparison does)."""
NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def rows_of(spec):
    """(prompt, reference) pairs: the prompt a list of messages (or plain text), the reference a string."""
    records = runproto.read_jsonl(spec["data"])
    if spec["max_rows"]:
        records = records[: spec["max_rows"]]
    out = []
    for i, rec in enumerate(records, 1):
        if spec["kind"] == "fields":
            turns = [{"role": "system", "content": spec["system"]}] if spec["system"] else []
            out.append((turns + [{"role": "user", "content": str(rec[spec["prompt_field"]])}],
                        str(rec[spec["answer_field"]])))
        elif "messages" in rec:
            msgs = rec["messages"]
            last = max((j for j, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
            if last is None or last == 0:
                raise ValueError(f"{spec['data']}:{i}: a conversation needs a turn before its last assistant turn")
            out.append(([{k: v for k, v in m.items() if k in ("role", "content", "name", "tool_calls")}
                         for m in msgs[:last]], msgs[last]["content"]))
        elif "prompt" in rec and "completion" in rec:
            out.append((rec["prompt"], rec["completion"]))
        else:
            raise ValueError(f"{spec['data']}:{i}: neither messages nor prompt/completion")
    return out


def normalise(text, numeric):
    """The answer as compared: stripped; as numbers: commas and ``$`` dropped, ``72.0`` and ``72`` alike."""
    text = text.strip()
    if not numeric:
        return text
    text = text.replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value == int(value) else repr(value)


def extract(text, pattern, fallback):
    """The answer in ``text``: the pattern's first group (or whole match), else the fallback, else None."""
    if pattern is None:
        return text
    m = re.search(pattern, text)
    if m:
        return m.group(1) if m.re.groups else m.group(0)
    if fallback == "last_number":
        found = NUMBER.findall(text)
        return found[-1] if found else None
    return None


def prompt_text(tokenizer, prompt):
    """The prompt as the model sees it: the template of record with a generation prompt (plain text as is)."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def stop_ids(tokenizer, model):
    """Token ids that end an answer: the tokenizer's eos and the model's generation_config eos."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(eos) if isinstance(eos, (list, tuple)) else ({eos} if eos is not None else set())
    return sorted(ids)


def generate(model, tokenizer, texts, spec, device):
    """Greedy answers to ``texts``, in left-padded batches, with a progress bar on stderr."""
    import torch
    from tqdm import tqdm

    tokenizer.padding_side = "left"
    stops, pad = stop_ids(tokenizer, model), tokenizer.pad_token_id
    answers = [None] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
    bar = tqdm(total=len(texts), desc=f"eval {spec['name']}", unit="row", file=sys.stderr, mininterval=2)
    for start in range(0, len(order), spec["batch_size"]):
        idx = order[start:start + spec["batch_size"]]
        enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device),
                                 max_new_tokens=spec["max_generated"], do_sample=False, eos_token_id=stops,
                                 pad_token_id=pad)
        for b, i in enumerate(idx):
            answers[i] = tokenizer.decode(out[b, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        bar.update(len(idx))
    bar.close()
    return answers


def score(spec):
    """Answer every row, write them to ``spec["out"]``; the exact-match score."""
    pairs = rows_of(spec)
    if not pairs:
        raise ValueError(f"{spec['data']} has no rows")
    tokenizer = hfglue.load_tokenizer(spec["base"], spec["template"], spec["trust_remote_code"], pad=True)
    device = heldout_worker.device_of(spec)
    model = heldout_worker.load_model(spec, device)
    texts = [prompt_text(tokenizer, p) for p, _ in pairs]
    answers = generate(model, tokenizer, texts, spec, device)
    rows, hits = [], []
    for (prompt, reference), text, output in zip(pairs, texts, answers):
        got = extract(output, spec["extract"], spec["fallback"])
        want = extract(reference, spec["answer_extract"], "none")
        correct = got is not None and want is not None and normalise(got, spec["numeric"]) == normalise(
            want, spec["numeric"])
        hits.append(1.0 if correct else 0.0)
        rows.append({"prompt": text, "reference": reference, "output": output, "answer": got, "expected": want,
                     "correct": correct})
    os.makedirs(os.path.dirname(spec["out"]), exist_ok=True)
    runproto.atomic_write_text(spec["out"], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {"exact_match": scores.mean_score(hits, SCORER, VERSION)}


def main(argv):
    """Score the artefact described by ``argv[1]``; record the score; exit 0, 1 (failed) or 130 (interrupted)."""
    spec = runproto.read_json(argv[1])
    outcome = runproto.Outcome(("transformers", "peft", "torch"))
    with outcome as out:
        out["scores"] = score(spec)
        out["artifacts"] = {f"eval_{spec['name']}": runproto.local_artifact(spec["out"])}
    return outcome.code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
