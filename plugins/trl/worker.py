"""TRL worker: runs one planned job inside the engine's process.

Usage (from the run directory): ``python plan/trl_worker.py plan/trl_args.json``.
Imports only TRL, its dependencies and the standard library (plus ``runproto``,
``lossmask`` and ``hfglue``, shipped beside this file), so an ejected plan runs
where anytune is not installed. Writes ``metrics.jsonl`` while training,
``artifacts/`` and the outcome file at the end; exits 0, 1 or 130.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hfglue  # noqa: E402
import runproto  # noqa: E402


def build_trainer(spec, writer):
    """Model, tokenizer, data and the TRL trainer for ``spec`` (plan/trl_args.json)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    mspec, method, kind, args = spec["model"], spec["method"], spec["kind"], dict(spec["args"])
    tokenizer = hfglue.load_tokenizer(mspec["name_or_path"], spec["data"]["chat_template"],
                                      mspec["trust_remote_code"])
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

    common = {"model": model, "processing_class": tokenizer, "peft_config": peft_config,
              "callbacks": [hfglue.metrics_callback(writer)]}
    train, evals = spec["data"]["train"], spec["data"]["eval"]
    if method == "sft":
        from trl import SFTConfig, SFTTrainer

        completion_only = args.get("completion_only_loss", True)
        args.setdefault("include_num_input_tokens_seen", "non_padding")

        def tokenized(path):  # input_ids + completion_mask, which TRL takes as already processed
            return Dataset.from_list(hfglue.tokenize(path, tokenizer, kind, completion_only, args["max_length"]))

        data = {"train_dataset": tokenized(train), "eval_dataset": tokenized(evals) if evals else None}
        return SFTTrainer(args=hfglue.config_args(SFTConfig, args), **data, **common), tokenizer
    data = {"train_dataset": Dataset.from_list(runproto.read_jsonl(train)),
            "eval_dataset": Dataset.from_list(runproto.read_jsonl(evals)) if evals else None}
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer(args=hfglue.config_args(DPOConfig, args), **data, **common), tokenizer
    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer(args=hfglue.config_args(ORPOConfig, args), **data, **common), tokenizer
    raise ValueError(f"unknown method {method!r}")


def main(argv):
    """Run the job in ``argv[1]``; record the outcome; exit 0, 1 (failed) or 130 (interrupted)."""
    spec = runproto.read_json(argv[1])
    writer = runproto.MetricsWriter()
    outcome = runproto.Outcome(("trl", "transformers", "peft", "torch", "datasets", "accelerate", "bitsandbytes"))
    with outcome as out:
        trainer, tokenizer = build_trainer(spec, writer)
        hfglue.train(trainer, out)
        out["artifacts"] = hfglue.save(trainer, tokenizer, bool(spec["peft"])) if spec.get("save", True) else {}
    return outcome.code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
