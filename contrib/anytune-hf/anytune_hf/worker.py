"""hf worker: runs one planned SFT job with plain ``transformers.Trainer`` and ``peft``.

Usage (from the run directory): ``python plan/hf_worker.py plan/hf_args.json``.
Imports only torch, transformers, peft and the standard library (plus ``runproto``,
``lossmask`` and ``hfglue``, shipped beside this file), so an ejected plan runs where
anytune is not installed. Writes ``metrics.jsonl`` while training, ``artifacts/`` and
the outcome file at the end; exits 0, 1 (failed) or 130 (interrupted). The core
alone writes ``result.json``.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hfglue  # noqa: E402
import runproto  # noqa: E402

IGNORE_INDEX = -100
"""Label of tokens that carry no loss (Hugging Face's convention)."""


def tokenize_sft(path, tokenizer, kind, completion_only, max_length):
    """Tokenise one split's normalised records with the template of record; labels are input_ids on loss
    tokens, else -100. Loss tokens are marked by ``lossmask`` (through ``hfglue.tokenize``), exactly as
    every other backend marks them."""
    rows = []
    for row in hfglue.tokenize(path, tokenizer, kind, completion_only, max_length):
        ids = row["input_ids"]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                     "labels": [i if keep else IGNORE_INDEX for i, keep in zip(ids, row["completion_mask"])]})
    return rows


class PadCollator:
    """Right-pads a list of tokenised rows into a batch: pad id, attention 0, label -100."""

    def __init__(self, pad_token_id, pad_to_multiple_of=None):
        """:param pad_to_multiple_of: round the batch length up to a multiple of this (None: longest row)."""
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, rows):
        """The batch as torch tensors ``input_ids``, ``attention_mask``, ``labels``."""
        import torch

        length = max(len(r["input_ids"]) for r in rows)
        if self.multiple:
            length = -(-length // self.multiple) * self.multiple
        fill = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        return {key: torch.tensor([r[key] + [value] * (length - len(r[key])) for r in rows])
                for key, value in fill.items()}


def build_trainer(spec, writer):
    """Model (with peft's LoRA/DoRA when asked), tokenizer, tokenised data and the Trainer for ``spec``."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, set_seed

    mspec, tspec, args = spec["model"], spec["tokenize"], dict(spec["args"])
    set_seed(args.get("seed", 42))  # before the model: peft initialises adapter weights randomly
    tokenizer = hfglue.load_tokenizer(mspec["name_or_path"], spec["data"]["chat_template"],
                                      mspec["trust_remote_code"])
    load_kwargs = {"dtype": getattr(torch, mspec["dtype"]), "trust_remote_code": mspec["trust_remote_code"]}
    if mspec.get("attn_implementation"):
        load_kwargs["attn_implementation"] = mspec["attn_implementation"]
    model = AutoModelForCausalLM.from_pretrained(mspec["name_or_path"], **load_kwargs)
    if spec["peft"]:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(**spec["peft"]))
        if args.get("activation_checkpointing") or args.get("gradient_checkpointing"):
            model.enable_input_require_grads()  # a frozen base gives checkpointed blocks no input grads otherwise

    def tokenized(path):
        return tokenize_sft(path, tokenizer, spec["kind"], tspec["completion_only_loss"], tspec["max_length"])

    train, evals = spec["data"]["train"], spec["data"]["eval"]
    order, train_set = spec.get("order"), tokenized(train)
    trainer = Trainer(model=model, args=hfglue.config_args(TrainingArguments, args),
                      train_dataset=hfglue.scheduled(train_set, order),
                      eval_dataset=tokenized(evals) if evals else None,
                      data_collator=PadCollator(tokenizer.pad_token_id, tspec.get("pad_to_multiple_of")),
                      processing_class=tokenizer, callbacks=[hfglue.metrics_callback(writer, order, len(train_set))])
    return trainer, tokenizer


def main(argv):
    """Run the job in ``argv[1]``; record the outcome; exit 0, 1 (failed) or 130 (interrupted)."""
    spec = runproto.resolve_env(runproto.read_json(argv[1]))  # secrets come from the environment only
    if spec.get("offline"):
        os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    writer = runproto.MetricsWriter()
    outcome = runproto.Outcome(("transformers", "peft", "torch", "accelerate"))
    with outcome as out:
        trainer, tokenizer = build_trainer(spec, writer)
        hfglue.train(trainer, out, tokenizer, adapter=bool(spec["peft"]), save_artifacts=spec.get("save", True),
                     resume=spec.get("resume"))
    return outcome.code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
