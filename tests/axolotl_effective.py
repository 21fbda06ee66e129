"""The effective configuration Axolotl runs for planned jobs, as JSON (test-side; runs in Axolotl's environment).

Usage: ``python tests/axolotl_effective.py OUT.json RUN_DIR...`` with Axolotl's interpreter
(``python -m core.envs create axolotl``). For each run directory it does what ``axolotl train
plan/axolotl.yaml`` does up to the first step, with the run directory as working directory: Axolotl's
``load_cfg`` (its plugins registered, its pydantic model validating and normalising the YAML), its dataset
loading (``load_datasets`` / ``load_preference_datasets``) and ``setup_model_and_trainer`` (tokenizer, model,
adapter, reference model, the Trainer and its arguments). It then reads what those hold, not what the YAML
says: the validated config, the ``TrainingArguments``/TRL config the Trainer runs with, peft's adapter config
and the modules it wrapped, the dtype the weights loaded in, the tokenizer's template, the Trainer's sampler
and the training rows (token ids and labels) in the order it reads them; the processes the plan's command
starts (torchrun's parser) and the rows each of them takes per micro-batch (accelerate's sharding of the
Trainer's sampler).

One process builds them all (about 0.5 s a plan after the first, against 10-15 s for a process of its own):
``gc.freeze()`` before each plan keeps Axolotl's collections from rescanning what earlier plans left, and the
shipped plugin saves the prepared data without spawning an interpreter (``save_in_process``).

Imports Axolotl, its dependencies and the standard library only.
"""
from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import torch  # noqa: E402


def plain(value):
    """A JSON-able copy."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if hasattr(value, "value") and isinstance(getattr(value, "value"), (str, int)):
        return value.value
    return str(value)


def launch(command: list[str]) -> dict:
    """Processes per node and nodes the plan's command starts, as torchrun's own parser reads its options (one
    process when the command is Axolotl's entry point alone)."""
    if "torch.distributed.run" not in command:
        return {"nproc_per_node": 1, "nnodes": 1, "world": 1}
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(command[command.index("torch.distributed.run") + 1:])
    nproc, nnodes = int(args.nproc_per_node), int(str(args.nnodes).split(":")[-1])
    return {"nproc_per_node": nproc, "nnodes": nnodes, "world": nproc * nnodes}


def shares(trainer, train, world: int) -> list[list[list[int]]]:
    """The row indices of each micro-batch every rank of ``world`` processes trains on: the Trainer's own sampler
    and micro-batch size, sharded by accelerate's ``prepare_data_loader`` with the Trainer's accelerator's settings,
    as its accelerator does in each rank (``Accelerator.prepare_data_loader``)."""
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    acc = trainer.accelerator
    drop_last = trainer.args.dataloader_drop_last
    loader = DataLoader(range(len(train)), batch_size=trainer.args.per_device_train_batch_size,
                        sampler=trainer._get_train_sampler(train), drop_last=True if drop_last is None else drop_last)
    return [[[int(i) for i in batch] for batch in prepare_data_loader(
        loader, num_processes=world, process_index=rank, split_batches=acc.split_batches, put_on_device=False,
        even_batches=acc.even_batches, use_seedable_sampler=acc.use_seedable_sampler,
        data_seed=acc.dataloader_config.data_seed)] for rank in range(world)]


def effective(run_dir: Path) -> dict:
    """What Axolotl holds for the plan in ``run_dir`` once its Trainer is built."""
    from axolotl.cli.args import TrainerCliArgs
    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets, load_preference_datasets
    from axolotl.integrations.base import PluginManager
    from axolotl.train import setup_model_and_trainer

    # what earlier plans left (Axolotl, torch and their modules) is never garbage: Axolotl's model loader runs
    # gc.collect() three times per model, 0.6 s each over a process this size; frozen objects are not scanned
    gc.freeze()
    os.chdir(run_dir)
    sys.path.insert(0, str(run_dir))
    PluginManager.get_instance().plugins.clear()  # this plan's plugins only (axolotl.train holds the instance)
    for name in [m for m in sys.modules if m == "plan" or m.startswith("plan.")]:
        del sys.modules[name]
    try:
        t0 = time.time()
        processes = launch(json.loads(Path("plan/command.json").read_text())["command"])
        cfg = load_cfg("plan/axolotl.yaml")
        t1 = time.time()
        cli = TrainerCliArgs()
        meta = load_preference_datasets(cfg=cfg, cli_args=cli) if cfg.rl else load_datasets(cfg=cfg, cli_args=cli)
        t2 = time.time()
        trainer, model, tokenizer, peft_config, _ = setup_model_and_trainer(cfg, meta)
        print(f"{run_dir.name}: cfg {t1 - t0:.1f}s data {t2 - t1:.1f}s trainer {time.time() - t2:.1f}s",
              file=sys.stderr)
        args = trainer.args
        lora = None
        peft_cfg = getattr(model, "peft_config", None)
        if peft_cfg:
            pc = peft_cfg["default"]
            targets = pc.target_modules
            lora = {"r": pc.r, "lora_alpha": pc.lora_alpha, "lora_dropout": pc.lora_dropout,
                    "use_dora": bool(pc.use_dora), "target_modules": sorted(targets) if isinstance(
                        targets, (set, list, tuple)) else targets,
                    "wrapped": sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                                       if hasattr(m, "lora_A") and len(getattr(m, "lora_A", {})) > 0})}
        dtypes = sorted({str(p.dtype).replace("torch.", "") for n, p in model.named_parameters()
                         if "lora_" not in n})
        train = trainer.train_dataset
        rows = None
        collated = None
        if not cfg.rl and train is not None and "input_ids" in train.column_names:
            keys = ["input_ids", "labels", *(["position_ids"] if "position_ids" in train.column_names else [])]
            rows = [{k: list(r[k]) for k in keys} for r in train]
            # what the model is handed: the keys of the first micro-batch of the Trainer's own data loader
            collated = sorted(next(iter(trainer.get_train_dataloader())).keys())
        elif train is not None:
            rows = [{k: r[k] for k in ("prompt", "chosen", "rejected") if k in r} for r in train]
        sampler = None
        with contextlib.suppress(Exception):
            sampler = type(trainer._get_train_sampler(train)).__name__
        out = {
            "cfg": {k: plain(cfg.get(k)) for k in (
                "base_model", "tokenizer_config", "trust_remote_code", "torch_dtype", "sequence_len", "rl",
                "rl_beta", "dpo_loss_type", "orpo_alpha", "sample_packing", "adapter", "curriculum_sampling",
                "shuffle_merged_datasets", "excess_length_strategy", "micro_batch_size", "gradient_accumulation_steps",
                "num_epochs", "max_steps", "chat_template", "plugins")},
            "args": plain(args.to_dict()),
            "args_class": type(args).__name__,
            "trainer_class": type(trainer).__name__,
            "warmup_steps": args.get_warmup_steps(args.max_steps) if args.max_steps > 0 else None,
            "lora": lora,
            "dtypes": dtypes,
            "model_path": str(Path(model.config._name_or_path).resolve()) if Path(
                model.config._name_or_path).exists() else model.config._name_or_path,
            "model_dims": [model.config.hidden_size, model.config.num_hidden_layers],
            "tokenizer_path": tokenizer.name_or_path,
            "chat_template": tokenizer.chat_template,
            "eval": trainer.eval_dataset is not None,
            "rows": rows,
            "sampler": sampler,
            "collated": collated,
            "collator": type(trainer.data_collator).__name__,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "gradient_checkpointing": bool(getattr(model, "is_gradient_checkpointing", False)),
            "settings": json.loads(Path("plan/anytune_axolotl.json").read_text()),
            "device": str(next(model.parameters()).device.type),
            "quantization": plain(q.to_dict() if hasattr(q := getattr(model.config, "quantization_config", None),
                                                         "to_dict") else q),
            "launch": processes,
            "shares": shares(trainer, train, processes["world"]) if train is not None else None,
        }
        del trainer, model
        return out
    finally:
        sys.path.remove(str(run_dir))
        gc.collect()


def main(argv: list[str]) -> int:
    """Write the effective configuration of each run directory (or its error) to ``argv[1]``."""
    out_path, dirs = Path(argv[1]).resolve(), [Path(d).resolve() for d in argv[2:]]
    results = []
    for run_dir in dirs:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                results.append(effective(run_dir))
        except Exception as exc:  # the engine refuses the plan: its fields fail, not all
            traceback.print_exc()
            results.append({"error": f"{type(exc).__name__}: {exc}"})
    out_path.write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    sys.exit(main(sys.argv))
