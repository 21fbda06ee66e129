"""TRL worker: runs one planned job inside the engine's process.

Usage (from the run directory): ``python plan/trl_worker.py plan/trl_args.json``.
Imports only TRL, its dependencies and the standard library (plus ``workerlib``,
copied beside this file), so an ejected plan runs where anytune is not installed.
Writes ``metrics.jsonl`` while training, ``artifacts/`` and ``result.json`` at the end.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workerlib  # noqa: E402


def tokenize_sft(records, tokenizer, kind, completion_only, max_length):
    """SFT records as a Dataset of ``input_ids`` and ``completion_mask``, which TRL takes as processed."""
    from datasets import Dataset

    return Dataset.from_list(workerlib.tokenize_records(records, tokenizer, kind, completion_only, max_length))


def config_args(config_class, args):
    """``args`` adapted to the installed TRL/transformers (older releases name activation checkpointing
    ``gradient_checkpointing``)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(config_class)}
    if "activation_checkpointing" in args and "activation_checkpointing" not in names:
        args["gradient_checkpointing"] = args.pop("activation_checkpointing")
    return config_class(**args)


def build_trainer(spec, writer):
    """Model, tokenizer, data and the TRL trainer for ``spec`` (plan/trl_args.json)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    mspec, method, kind, args = spec["model"], spec["method"], spec["kind"], dict(spec["args"])
    tokenizer = AutoTokenizer.from_pretrained(mspec["name_or_path"], trust_remote_code=mspec["trust_remote_code"])
    template_path = spec["data"]["chat_template"]
    if template_path and os.path.exists(template_path):
        with open(template_path) as f:
            tokenizer.chat_template = f.read()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    load_kwargs = {"dtype": getattr(torch, mspec["dtype"]), "trust_remote_code": mspec["trust_remote_code"]}
    if mspec["load_in_4bit"]:
        from transformers import BitsAndBytesConfig

        load_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if args.get("bf16") else torch.float16)
    model = AutoModelForCausalLM.from_pretrained(mspec["name_or_path"], **load_kwargs)

    peft_config = None
    if spec["peft"]:
        from peft import LoraConfig

        peft_config = LoraConfig(**spec["peft"])

    train = workerlib.read_jsonl(spec["data"]["train"])
    evals = workerlib.read_jsonl(spec["data"]["eval"]) if spec["data"]["eval"] else None
    common = {"model": model, "processing_class": tokenizer, "peft_config": peft_config,
              "callbacks": [workerlib.hf_metrics_callback(writer)]}
    if method == "sft":
        from trl import SFTConfig, SFTTrainer

        completion_only = args.get("completion_only_loss", True)
        args.setdefault("include_num_input_tokens_seen", "non_padding")
        data = {"train_dataset": tokenize_sft(train, tokenizer, kind, completion_only, args["max_length"])}
        if evals:
            data["eval_dataset"] = tokenize_sft(evals, tokenizer, kind, completion_only, args["max_length"])
        return SFTTrainer(args=config_args(SFTConfig, args), **data, **common), tokenizer
    from datasets import Dataset

    data = {"train_dataset": Dataset.from_list(train)}
    if evals:
        data["eval_dataset"] = Dataset.from_list(evals)
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer(args=config_args(DPOConfig, args), **data, **common), tokenizer
    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer(args=config_args(ORPOConfig, args), **data, **common), tokenizer
    raise ValueError(f"unknown method {method!r}")


def main(argv):
    spec = workerlib.read_json(argv[1])
    writer = workerlib.MetricsWriter("metrics.jsonl")
    rec = workerlib.Recorder("trl", ("trl", "transformers", "peft", "torch", "datasets", "accelerate",
                                     "bitsandbytes"))
    with rec as result:
        trainer, tokenizer = build_trainer(spec, writer)
        workerlib.train_hf(trainer, result)
        result["artifacts"] = (workerlib.save_hf(trainer, tokenizer, bool(spec["peft"]))
                               if spec.get("save", True) else {})
    return rec.code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
