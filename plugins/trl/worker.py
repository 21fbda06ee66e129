"""TRL worker: runs one planned job inside the engine's process.

Usage (from the run directory): ``python plan/trl_worker.py plan/trl_args.json``.
Imports only TRL, its dependencies and the standard library (plus ``runproto``,
``lossmask``, ``hfglue`` and ``hfvarlen``, shipped beside this file), so an ejected plan runs
where anytune is not installed. Writes ``metrics.jsonl`` while training,
``artifacts/`` and the outcome file at the end; exits 0, 1 or 130.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hfglue  # noqa: E402
import hfvarlen  # noqa: E402
import runproto  # noqa: E402


def settings(spec):
    """What the TRL trainer of ``spec`` (plan/trl_args.json) is built from, and nothing built yet that costs:
    the method's TRL ``*Config`` (after its ``__post_init__``), peft's ``LoraConfig``, the model's loading
    kwargs, the tokenizer with the template of record, and how the data is tokenised. ``build_trainer``
    uses exactly these; tests read the engine's effective configuration from them."""
    import torch

    mspec, method, args = spec["model"], spec["method"], dict(spec["args"])
    if method == "sft":
        from trl import SFTConfig as config_class, SFTTrainer as trainer_class
    elif method == "dpo":
        from trl import DPOConfig as config_class, DPOTrainer as trainer_class
    elif method == "orpo":
        from trl.experimental.orpo import ORPOConfig as config_class, ORPOTrainer as trainer_class
    elif method == "kto":
        from trl import KTOConfig as config_class, KTOTrainer as trainer_class
    else:
        raise ValueError(f"unknown method {method!r}")
    config = hfglue.config_args(config_class, args)
    tokenizer = hfglue.load_tokenizer(mspec["name_or_path"], spec["data"]["chat_template"],
                                      mspec["trust_remote_code"])
    load_kwargs = {"dtype": getattr(torch, mspec["dtype"]), "trust_remote_code": mspec["trust_remote_code"],
                   "attn_implementation": mspec.get("attn_implementation", "sdpa")}
    if load_kwargs["attn_implementation"] == hfvarlen.NAME:
        hfvarlen.register()
    if mspec["load_in_4bit"]:
        from transformers import BitsAndBytesConfig

        load_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if config.bf16 else torch.float16)
    peft_config = None
    if spec["peft"]:
        from peft import LoraConfig

        peft_config = LoraConfig(**spec["peft"])
    return {"method": method, "kind": spec["kind"], "model": mspec["name_or_path"], "load": load_kwargs,
            "tokenizer": tokenizer, "lora": peft_config, "trainer_class": trainer_class,
            "args": config,
            # SFT data is tokenised here, with the loss masks every engine uses; TRL takes it as processed
            "completion_only": args["completion_only_loss"] if method == "sft" else None,
            "max_length": args["max_length"],
            "train": spec["data"]["train"], "eval": spec["data"]["eval"], "save": spec["save"],
            "order": spec.get("order")}


def build_trainer(spec, writer):
    """Model, tokenizer, data and the TRL trainer for ``spec`` (plan/trl_args.json)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    s = settings(spec)
    tokenizer = s["tokenizer"]
    model = AutoModelForCausalLM.from_pretrained(s["model"], **s["load"])
    train, evals = s["train"], s["eval"]
    common = {"model": model, "processing_class": tokenizer, "peft_config": s["lora"],
              "callbacks": [hfglue.metrics_callback(writer, s["order"], len(runproto.read_jsonl(train)))]}
    if s["method"] == "sft":
        def tokenized(path):  # input_ids + completion_mask, which TRL takes as already processed
            return Dataset.from_list(hfglue.tokenize(path, tokenizer, s["kind"], s["completion_only"],
                                                     s["max_length"]))

        data = {"train_dataset": hfglue.scheduled(tokenized(train), s["order"]),
                "eval_dataset": tokenized(evals) if evals else None}
    else:
        data = {"train_dataset": hfglue.scheduled(Dataset.from_list(runproto.read_jsonl(train)), s["order"]),
                "eval_dataset": Dataset.from_list(runproto.read_jsonl(evals)) if evals else None}
    return s["trainer_class"](args=s["args"], **data, **common), tokenizer


def main(argv):
    """Run the job in ``argv[1]``; record the outcome; exit 0, 1 (failed) or 130 (interrupted)."""
    spec = runproto.resolve_env(runproto.read_json(argv[1]))  # secrets come from the environment only
    writer = runproto.MetricsWriter()
    outcome = runproto.Outcome(("trl", "transformers", "peft", "torch", "datasets", "accelerate", "bitsandbytes"))
    with outcome as out:
        trainer, tokenizer = build_trainer(spec, writer)
        hfglue.train(trainer, out, tokenizer, adapter=bool(spec["peft"]), save_artifacts=spec["save"],
                     resume=spec.get("resume"))
    return outcome.code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
