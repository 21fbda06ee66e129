"""Held-out evaluator worker: the mean loss over loss tokens of ``data/eval.jsonl``, for any engine's artefact.

Usage (from the run directory): ``python plan/eval-heldout/heldout_worker.py plan/eval-heldout/heldout.json``.
Imports only transformers, peft, torch and the standard library (plus ``runproto``, ``lossmask``,
``hfglue`` and ``scores``, shipped beside this file), so an ejected plan runs where anytune is not installed. Records are tokenised
with the template of record and the loss masks every engine trains with; batches are right-padded with an
attention mask (the same sums as one forward per example); labels are shifted as Hugging Face models do;
loss = sum of token losses / number of loss tokens. Writes the scores into the outcome; exits 0, 1 or 130.
"""
from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lossmask  # noqa: E402
import hfglue  # noqa: E402
import runproto  # noqa: E402
import scores  # noqa: E402

SCORER, VERSION = "anytune.heldout", "1"
"""Name and version of this scorer in ``eval.json`` (the version changes when the computation does)."""


def device_of(spec):
    """The torch device to score on: the job's train.device; auto: cuda when present."""
    import torch

    if spec["device"] in ("cpu", "cuda"):
        return spec["device"]
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(spec, device):
    """The trained model in eval mode: the adapter on its base (the base in 4-bit for QLoRA), or the full model."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, spec["dtype"])
    kwargs = {"dtype": dtype, "trust_remote_code": spec["trust_remote_code"]}
    if spec["load_in_4bit"]:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype if dtype != torch.float32 else torch.bfloat16)
        kwargs["device_map"] = {"": device}
    if spec["adapter"]:
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(spec["base"], **kwargs),
                                          spec["adapter"])
    else:
        model = AutoModelForCausalLM.from_pretrained(spec["model"], **kwargs)
    if not spec["load_in_4bit"]:
        model = model.to(device)
    return model.eval()


def loss_sums(model, rows, batch_size, pad_id, device):
    """(sum of token losses, number of loss tokens) over tokenised rows, in right-padded batches."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        batch = [rows[i] for i in order[start:start + batch_size]]
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for b, r in enumerate(batch):
            n = len(r["input_ids"])
            ids[b, :n] = torch.tensor(r["input_ids"])
            attention[b, :n] = 1
            mask = torch.tensor(r["completion_mask"], dtype=torch.bool)
            labels[b, :n] = torch.where(mask, ids[b, :n], torch.tensor(-100))
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
        for b in range(len(batch)):  # one row at a time in float32: a batch's logits in float32 can be large
            target = labels[b, 1:].to(logits.device)
            total += F.cross_entropy(logits[b, :-1].float(), target, ignore_index=-100, reduction="sum").item()
            count += int((target != -100).sum())
    return total, count


def score(spec):
    """The held-out scores in ``eval.json``'s schema: loss and perplexity, each with n = loss tokens."""
    records = runproto.read_jsonl(spec["eval"])
    if spec["max_rows"]:
        records = records[: spec["max_rows"]]
    tokenizer = hfglue.load_tokenizer(spec["base"], spec["template"], spec["trust_remote_code"], pad=True)
    rows = lossmask.tokenize_records(records, tokenizer, spec["kind"], spec["completion_only"], spec["max_length"])
    device = device_of(spec)
    model = load_model(spec, device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total, count = loss_sums(model, rows, spec["batch_size"], pad_id, device)
    if count == 0:
        raise ValueError(f"no held-out row of {spec['eval']} has a token that carries loss "
                         f"(after truncation to {spec['max_length']} tokens)")
    loss = total / count
    return {"loss": scores.score(loss, count, SCORER, VERSION),
            "perplexity": scores.score(math.exp(loss) if loss < 700 else float("inf"), count, SCORER, VERSION)}


def main(argv):
    """Score the artefact described by ``argv[1]``; record the scores; exit 0, 1 (failed) or 130 (interrupted)."""
    spec = runproto.read_json(argv[1])
    outcome = runproto.Outcome(("transformers", "peft", "torch"))
    with outcome as out:
        out["scores"] = score(spec)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
