"""hf worker: runs one planned SFT job with plain ``transformers.Trainer`` and ``peft``.

Usage (from the run directory): ``python plan/hf_worker.py plan/hf_args.json``.
Imports only torch, transformers, peft and the standard library (plus ``workerlib``,
copied beside this file), so an ejected plan runs where anytune is not installed.
Writes ``metrics.jsonl`` while training, ``artifacts/`` and ``result.json`` at the end.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workerlib  # noqa: E402

IGNORE_INDEX = -100
"""Label of tokens that carry no loss (Hugging Face's convention)."""


def tokenize_sft(records, tokenizer, kind, completion_only, max_length):
    """Tokenise SFT records with the template of record; labels are input_ids on loss tokens, else -100.

    Loss tokens are marked by ``workerlib.tokenize_records``, exactly as the other backends mark them.
    """
    rows = []
    for row in workerlib.tokenize_records(records, tokenizer, kind, completion_only, max_length):
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


def training_arguments(args):
    """``TrainingArguments`` for ``args``, adapted to the installed transformers (before 5.x activation
    checkpointing is called ``gradient_checkpointing``)."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    if "activation_checkpointing" in args and "activation_checkpointing" not in names:
        args["gradient_checkpointing"] = args.pop("activation_checkpointing")
    return TrainingArguments(**args)


def build_trainer(spec, writer):
    """Model (with peft's LoRA/DoRA when asked), tokenizer, tokenised data and the Trainer for ``spec``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, set_seed

    mspec, tspec, args = spec["model"], spec["tokenize"], dict(spec["args"])
    set_seed(args.get("seed", 42))  # before the model: peft initialises adapter weights randomly
    tokenizer = AutoTokenizer.from_pretrained(mspec["name_or_path"], trust_remote_code=mspec["trust_remote_code"])
    template_path = spec["data"]["chat_template"]
    if template_path and os.path.exists(template_path):
        with open(template_path) as f:
            tokenizer.chat_template = f.read()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    load_kwargs = {"dtype": getattr(torch, mspec["dtype"]), "trust_remote_code": mspec["trust_remote_code"]}
    if mspec.get("attn_implementation"):
        load_kwargs["attn_implementation"] = mspec["attn_implementation"]
    model = AutoModelForCausalLM.from_pretrained(mspec["name_or_path"], **load_kwargs)
    if spec["peft"]:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(**spec["peft"]))
        if args.get("activation_checkpointing") or args.get("gradient_checkpointing"):
            model.enable_input_require_grads()  # a frozen base gives checkpointed blocks no input grads otherwise

    def tokenize(path):
        """Tokenised rows of one split's normalised records."""
        return tokenize_sft(workerlib.read_jsonl(path), tokenizer, spec["kind"],
                            tspec["completion_only_loss"], tspec["max_length"])

    train = tokenize(spec["data"]["train"])
    evals = tokenize(spec["data"]["eval"]) if spec["data"]["eval"] else None
    trainer = Trainer(model=model, args=training_arguments(args), train_dataset=train, eval_dataset=evals,
                      data_collator=PadCollator(tokenizer.pad_token_id, tspec.get("pad_to_multiple_of")),
                      processing_class=tokenizer, callbacks=[workerlib.hf_metrics_callback(writer)])
    return trainer, tokenizer


def main(argv):
    """Run the job in ``argv[1]``; always write result.json; exit 0, 1 (failed) or 130 (interrupted)."""
    spec = workerlib.read_json(argv[1])
    if spec.get("offline"):
        os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    writer = workerlib.MetricsWriter("metrics.jsonl")
    rec = workerlib.Recorder("hf", ("transformers", "peft", "torch", "accelerate"))
    with rec as result:
        trainer, tokenizer = build_trainer(spec, writer)
        workerlib.train_hf(trainer, result)
        result["artifacts"] = (workerlib.save_hf(trainer, tokenizer, bool(spec["peft"]))
                               if spec.get("save", True) else {})
    return rec.code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
