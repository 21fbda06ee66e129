"""Unsloth worker: runs one planned job inside Unsloth's process.

Usage (from the run directory): ``python plan/unsloth_worker.py plan/unsloth_args.json``.
``import unsloth`` comes first (it patches transformers, TRL and peft), after the variables that keep it
offline and quiet. Imports only Unsloth, its dependencies and the standard library (plus ``runproto``,
``lossmask`` and ``hfglue``, shipped beside this file), so an ejected plan runs where anytune is not
installed. Writes ``metrics.jsonl`` while training, ``artifacts/`` and the outcome file at the end;
exits 0, 1 or 130 (2: wrong arguments, before anything is imported).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hfglue  # noqa: E402  (imports no engine at module level)
import runproto  # noqa: E402

USAGE = "usage: python plan/unsloth_worker.py plan/unsloth_args.json  (from the run directory)"
QUIET = {"UNSLOTH_DISABLE_STATISTICS": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "UNSLOTH_LLAMA_CPP_OFFLINE": "1",
         "UNSLOTH_PREWARM_HUB_CACHE": "0", "TOKENIZERS_PARALLELISM": "false"}
"""Set (unless already set) before ``import unsloth``: no statistics call, no llama.cpp download, no hub cache
pre-warming; the plan's ``command.json`` sets them too."""
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
"""Set too when the job is offline (``offline=true``): no hub look-up at all."""
METHODS = {"sft": ("trl", "SFTConfig", "SFTTrainer"), "dpo": ("trl", "DPOConfig", "DPOTrainer"),
           "orpo": ("trl.experimental.orpo", "ORPOConfig", "ORPOTrainer")}
"""method -> (module, config class, trainer class): TRL's, as Unsloth patches them on import."""


class UsageError(Exception):
    """The worker was started with wrong arguments (exit code 2, before anything heavy is imported)."""


def read_spec(argv: list[str]) -> dict:
    """The job of ``argv[1]`` (plan/unsloth_args.json), checked before anything heavy is imported.

    :raises UsageError: a wrong argument list, an unreadable file, or a file that is no Unsloth plan.
    """
    if len(argv) != 2:
        raise UsageError(f"{USAGE}\n(got {len(argv) - 1} arguments)")
    try:
        spec = runproto.read_json(argv[1])
    except (OSError, ValueError) as exc:
        raise UsageError(f"{USAGE}\ncannot read {argv[1]}: {exc}") from None
    missing = [k for k in ("method", "kind", "model", "peft", "data", "args", "save") if k not in spec]
    if missing or spec.get("method") not in METHODS:
        raise UsageError(f"{argv[1]} is not an Unsloth plan: missing keys {missing}, method "
                         f"{spec.get('method')!r} (known: {', '.join(METHODS)})")
    return runproto.resolve_env(spec)  # secrets come from the environment only


def quiet(spec: dict, environ=os.environ) -> None:
    """Make the process offline and quiet before Unsloth is imported (values already set are kept)."""
    for key, value in {**QUIET, **(OFFLINE if spec.get("offline") else {})}.items():
        environ.setdefault(key, value)


def settings(spec: dict) -> dict:
    """What the trainer of ``spec`` is built from, nothing built yet that costs: the method's (patched) TRL
    ``*Config`` after its ``__post_init__``, ``from_pretrained`` and ``get_peft_model`` kwargs, the tokenizer
    with the template of record. Imports Unsloth (first) when it is not imported yet."""
    quiet(spec)
    import unsloth  # noqa: F401  (first: it patches transformers, TRL and peft)
    import importlib

    import torch

    module, config_name, trainer_name = METHODS[spec["method"]]
    mod = importlib.import_module(module)
    args = dict(spec["args"])
    config = hfglue.config_args(getattr(mod, config_name), args)
    load = dict(spec["model"], dtype=getattr(torch, spec["model"]["dtype"]))
    tokenizer = hfglue.load_tokenizer(spec["model"]["model_name"], spec["data"]["chat_template"])
    return {"method": spec["method"], "kind": spec["kind"], "load": load, "lora": spec["peft"],
            "tokenizer": tokenizer, "trainer_class": getattr(mod, trainer_name), "args": config,
            "completion_only": args.get("completion_only_loss") if spec["method"] == "sft" else None,
            "max_length": args["max_length"], "train": spec["data"]["train"], "eval": spec["data"]["eval"],
            "save": spec["save"]}


def build_trainer(spec: dict, writer: runproto.MetricsWriter):
    """Unsloth's model (with its LoRA when the job has one), the tokenizer, the data and the patched TRL
    trainer for ``spec``."""
    s = settings(spec)
    from datasets import Dataset
    from unsloth import FastLanguageModel

    tokenizer = s["tokenizer"]
    model, _ = FastLanguageModel.from_pretrained(**s["load"])  # Unsloth's tokenizer: anytune's is of record
    if s["lora"]:
        model = FastLanguageModel.get_peft_model(model, **s["lora"])
    train, evals = s["train"], s["eval"]
    if s["method"] == "sft":
        def tokenized(path):  # input_ids + completion_mask: the masks every engine trains with
            return Dataset.from_list(hfglue.tokenize(path, tokenizer, s["kind"], s["completion_only"],
                                                     s["max_length"]))

        data = {"train_dataset": tokenized(train), "eval_dataset": tokenized(evals) if evals else None}
    else:
        data = {"train_dataset": Dataset.from_list(runproto.read_jsonl(train)),
                "eval_dataset": Dataset.from_list(runproto.read_jsonl(evals)) if evals else None}
    trainer = s["trainer_class"](model=model, args=s["args"], processing_class=tokenizer,
                                 callbacks=[hfglue.metrics_callback(writer)], **data)
    print(f"anytune: {type(trainer).__name__} ({type(trainer).__module__}), model {type(model).__name__}, "
          f"gradient checkpointing {s['load']['use_gradient_checkpointing']!r}", file=sys.stderr, flush=True)
    return trainer, tokenizer


def main(argv: list[str]) -> int:
    """Run the job in ``argv[1]``; record the outcome; exit 0, 1 (failed), 130 (interrupted) or 2 (wrong
    arguments: nothing imported, no outcome file)."""
    try:
        spec = read_spec(argv)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    quiet(spec)
    writer = runproto.MetricsWriter()
    outcome = runproto.Outcome(("unsloth", "unsloth_zoo", "trl", "transformers", "peft", "torch", "datasets",
                                "accelerate", "bitsandbytes", "triton", "xformers"))
    with outcome as out:
        trainer, tokenizer = build_trainer(spec, writer)
        hfglue.train(trainer, out, tokenizer, adapter=bool(spec["peft"]), save_artifacts=spec["save"])
    return outcome.code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
