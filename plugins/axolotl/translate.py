"""Translation of the canonical job into an Axolotl config (``plan/axolotl.yaml``): plain dicts, no engine import.

SFT data goes to Axolotl already tokenised (``input_ids``, ``attention_mask``, ``labels``), made with the same
tokenizer, template of record and loss masks as every other engine (``core.labels``, i.e.
``core.lossmask``), cut at ``train.max_length`` and laid out in the job's example order
(``runproto.example_order``); Axolotl reads them sequentially (``curriculum_sampling``) and never shuffles or
de-duplicates them. Preference data goes as ``prompt``/``chosen``/``rejected`` text rendered with the template of
record (no dataset type: Axolotl reads those fields as they are).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

PLAN_FILE = "axolotl.yaml"
"""The Axolotl config, in the plan directory."""
PLUGIN = "anytune_axolotl.py"
"""The Axolotl plugin anytune ships into the plan directory (``plugins/axolotl/plugin.py``)."""
PLUGIN_NAME = "plan.anytune_axolotl.AnytunePlugin"
"""How the YAML names the plugin: Axolotl imports it from the run directory (its working directory)."""
SETTINGS = "anytune_axolotl.json"
"""What the plugin needs beyond Axolotl's config: the example order, the artefact kind, save or not."""
DATA_DIR = "axolotl_data"
"""Folder of the plan directory holding the data as Axolotl reads it."""
PREPARED = "axolotl_prepared"
"""Axolotl's ``dataset_prepared_path`` (its cache of processed data), inside the plan directory."""

SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant",
              "constant_with_warmup": "constant_with_warmup"}
"""canonical train.lr_scheduler -> Axolotl's lr_scheduler (transformers' names)"""
OPTIMIZERS = {"adamw": "adamw_torch", "sgd": "sgd"}
"""canonical train.optimizer -> Axolotl's optimizer (transformers' optim names)"""
RL = {"dpo": "dpo", "orpo": "orpo"}
"""canonical method.name -> Axolotl's rl (SFT has none)"""
DPO_LOSSES = {"sigmoid": "sigmoid", "ipo": "ipo", "hinge": "hinge"}
"""canonical method.loss_type -> TRL's DPO loss_type as Axolotl passes it (``dpo_loss_type``)"""


def load_dtype(job: Any) -> str:
    """The dtype Axolotl loads the base in: ``model.dtype``, else the training precision's (fp32 for fp32)."""
    if job.model.dtype != "auto":
        return job.model.dtype
    return {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[job.train.precision]


def order_of(job: Any, rows: int) -> dict[str, Any]:
    """The example order (``runproto.example_order``'s arguments) the data is written in.

    With several processes one micro-step reads ``train.batch_size`` rows per process, in turn (accelerate's
    ``BatchSamplerShard`` hands the sequential sampler's batches to the ranks round-robin), so the order is cut into
    batches of ``train.batch_size × processes``, as on TRL (``hftrainer.schedule``).

    :param rows: the training rows as Axolotl reads them: records, or packs when packing (:func:`units`).
    """
    import core
    from core import runproto

    t = job.train
    batch = t.batch_size * core.world_size(job)
    steps, _ = runproto.steps_and_passes(rows, batch, t.grad_accum, t.max_steps, t.epochs)
    return {"steps": steps, "batch": batch, "accum": t.grad_accum, "seed": t.seed, "shuffle": bool(t.shuffle)}


def packed(job: Any) -> bool:
    """The job packs its SFT examples (``method.packing``): anytune packs them, Axolotl reads the packs."""
    return job.method.name == "sft" and bool(job.method.packing)


def native_config(job: Any, data: Any, rel: Callable[[Any], str] = str, resume: str | None = None,
                  rows: int | None = None) -> dict[str, Any]:
    """The Axolotl config of the job, ``backend.native`` merged last.

    :param data: the prepared data (``core.DataInfo``).
    :param rel: turns a path into the form the plan names it by (relative to the run directory).
    :param resume: checkpoint folder to continue from (``Context.resume``).
    :param rows: training rows as Axolotl reads them (what :func:`write_data` returns); default: the records.
    """
    from core import runproto

    t, m, p = job.train, job.method, job.peft
    order = order_of(job, int(rows if rows is not None else data.stats["rows"]["train"]))
    steps = order["steps"]
    plan = "plan"
    cfg: dict[str, Any] = {
        "base_model": str(job.model.name_or_path),
        "tokenizer_config": str(job.model.name_or_path),
        "trust_remote_code": bool(job.model.trust_remote_code),
        "sequence_len": int(t.max_length),
        "excess_length_strategy": "truncate",  # rows come cut at max_length already; never drop one
        "micro_batch_size": int(t.batch_size),
        "eval_batch_size": int(t.batch_size),
        "gradient_accumulation_steps": int(t.grad_accum),
        "num_epochs": float(t.epochs),
        "learning_rate": float(t.learning_rate),
        "lr_scheduler": SCHEDULERS[t.lr_scheduler],
        "weight_decay": float(t.weight_decay),
        "optimizer": OPTIMIZERS[t.optimizer],
        "max_grad_norm": float(t.max_grad_norm),
        "gradient_checkpointing": bool(t.gradient_checkpointing),
        "bf16": t.precision == "bf16",
        "fp16": t.precision == "fp16",
        "tf32": False,
        "seed": int(t.seed),
        "output_dir": runproto.CHECKPOINTS,
        "logging_steps": int(t.logging_steps),
        "save_safetensors": True,
        "save_strategy": "steps" if t.save_steps > 0 else "no",
        "val_set_size": 0.0,
        "shuffle_merged_datasets": False,
        "shuffle_before_merging_datasets": False,
        "dataset_exact_deduplication": False,
        "dataset_prepared_path": f"{plan}/{PREPARED}",
        "dataset_processes": 1,
        # packing: the rows come packed (input_ids, labels, position_ids restarting at 0 for each example, no
        # attention_mask: transformers then masks attention block-diagonally); Axolotl's multipack stays off
        "sample_packing": False,
        # on CUDA in bf16, packed rows attend within each example through Axolotl's own varlen path (PyTorch's
        # varlen_attn over the boundaries the position ids give) instead of SDPA over a block-diagonal mask
        "attn_implementation": "sdpa" if t.device == "cuda" else None,
        "sdpa_varlen": True if packed(job) and t.device == "cuda" and t.precision != "fp32" else None,
        "plugins": [PLUGIN_NAME],
        "chat_template": "jinja" if data.template else None,
        "chat_template_jinja": rel(data.template) if data.template else None,  # a path: Axolotl reads the file
        "include_tokens_per_second": True,  # the Trainer counts input tokens (metrics.jsonl's tokens)
        "use_tensorboard": False,
        "save_first_step": False,
    }
    cfg["max_steps"] = int(steps)
    # ceil(ratio * steps), as transformers rounds it on every engine (Axolotl's warmup_ratio floors it); Axolotl
    # turns a warm-up of 1 step into 2, which the shipped plugin undoes (settings' warmup_steps)
    cfg["warmup_steps"] = warmup_steps(job, int(steps))
    cfg["curriculum_sampling"] = True  # a SequentialSampler: the rows are already in the job's order
    if t.save_steps > 0:
        cfg["save_steps"] = int(t.save_steps)
    if data.eval is not None and t.eval_steps > 0:
        cfg.update(eval_strategy="steps", eval_steps=int(t.eval_steps))
    else:
        cfg["eval_strategy"] = "no"
    if p.type != "none":
        targets = list(p.target_modules)
        cfg.update(adapter="qlora" if p.type == "qlora" else "lora", lora_r=int(p.r), lora_alpha=int(p.alpha),
                   lora_dropout=float(p.dropout), peft_use_dora=p.type == "dora")
        if t.device != "cuda":
            # Axolotl's fused LoRA kernels (which it turns on for SFT LoRA/QLoRA) are Triton kernels for CUDA
            # only; on CUDA they are Axolotl's to choose (the same LoRA, computed in fewer kernels)
            cfg.update(lora_mlp_kernel=False, lora_qkv_kernel=False, lora_o_kernel=False,
                       lora_embedding_kernel=False)
        if targets == ["all-linear"]:
            cfg.update(lora_target_linear=True)
        else:
            cfg.update(lora_target_modules=targets, lora_target_linear=False)
        if p.type == "qlora":
            cfg.update(load_in_4bit=True)
    if m.name in RL:
        cfg["rl"] = RL[m.name]
        cfg["rl_beta"] = float(m.beta)
        if m.name == "dpo":
            cfg["dpo_loss_type"] = [DPO_LOSSES[m.loss_type]]
    # no dataset type: Axolotl takes SFT rows with input_ids/attention_mask/labels, and preference rows with
    # prompt/chosen/rejected, as they are
    cfg["datasets"] = [{"path": f"{plan}/{DATA_DIR}/train.jsonl", "ds_type": "json", "split": "train"}]
    if data.eval is not None:
        cfg["test_datasets"] = [{"path": f"{plan}/{DATA_DIR}/eval.jsonl", "ds_type": "json", "split": "train"}]
    if resume:
        cfg["resume_from_checkpoint"] = resume
    cfg = {k: v for k, v in cfg.items() if v is not None}
    cfg.update(OmegaConf.to_container(job.backend.native, resolve=True) if job.backend.get("native") else {})
    return cfg


def warmup_steps(job: Any, steps: int) -> int:
    """Warm-up steps of ``train.warmup_ratio`` over ``steps``: ``ceil(ratio * steps)``, transformers' rounding."""
    return math.ceil(float(job.train.warmup_ratio) * steps)


def settings(job: Any, data: Any, rows: int | None = None) -> dict[str, Any]:
    """What the shipped plugin reads beside the YAML (``plan/anytune_axolotl.json``).

    :param rows: training rows as Axolotl reads them (:func:`write_data`'s count; packs when packing)."""
    rows = int(rows if rows is not None else data.stats["rows"]["train"])
    order = order_of(job, rows)
    return {"order": order, "rows": rows, "adapter": job.peft.type != "none",
            "save": bool(job.train.save_artifacts), "method": job.method.name,
            "warmup_steps": warmup_steps(job, order["steps"]), "packed": packed(job),
            "use_cpu": job.train.device == "cpu"}


# -- the data as Axolotl reads it -------------------------------------------------------------------------


def write_data(job: Any, data: Any, run_dir: Path, out_dir: Path) -> int:
    """Write ``train.jsonl`` (and ``eval.jsonl``) as Axolotl reads them into ``out_dir``; returns the number of
    training rows before ordering (records, or packs when packing), what :func:`order_of` orders.

    SFT: one tokenised row per example (one per pack when packing, :func:`pack_rows`), in the example order;
    preference: prompt/chosen/rejected text. Held-out rows are never packed.
    """
    from core import runproto

    out_dir.mkdir(parents=True, exist_ok=True)
    units = int(data.stats["rows"]["train"])
    for split, path in (("train", data.train), ("eval", data.eval)):
        if path is None:
            continue
        if job.method.name == "sft":
            rows = tokenised(run_dir, split)
            if split == "train" and packed(job):
                rows = pack_rows(rows, int(job.train.max_length))
        else:
            rows = preference_text(runproto.read_jsonl(str(path)), data)
        if split == "train":
            units = len(rows)
            order = order_of(job, units)
            idx = runproto.example_order(len(rows), order["steps"], order["batch"], order["accum"], order["seed"],
                                         order["shuffle"])
            rows = [rows[i] for i in idx]
        dest = out_dir / f"{split}.jsonl"
        runproto.atomic_write_text(str(dest), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return units


BFD_CHUNK = 1000
"""TRL packs in ``datasets.map(batched=True)`` batches of 1,000 rows (its default): packs never mix rows of two."""


def bfd(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing packing of rows of ``lengths`` into packs of at most ``capacity`` tokens: TRL's
    (``trl.data_utils._pack_bfd``, SFTTrainer's default ``packing_strategy="bfd"``), written out so the packs are
    TRL's: rows taken longest first (equal lengths in row order), each into the pack with the least room that
    holds it (of packs with equal room, the one that got that room first), else a new pack; packs in the order
    they were opened, rows in each in the order they went in. Indices into ``lengths``."""
    import bisect
    from collections import defaultdict, deque

    out: list[list[int]] = []
    for start in range(0, len(lengths), BFD_CHUNK):
        ids = [i for i in range(start, min(start + BFD_CHUNK, len(lengths))) if lengths[i] > 0]
        ids.sort(key=lambda i: -min(lengths[i], capacity))  # stable: equal lengths keep their order
        rooms: list[int] = []  # sorted free rooms (0 < room < capacity) that some open pack has
        by_room: dict[int, deque] = defaultdict(deque)
        for i in ids:
            n = min(lengths[i], capacity)
            k = bisect.bisect_left(rooms, n)
            if k < len(rooms):
                room = rooms[k]
                pack = by_room[room].popleft()
                if not by_room[room]:
                    rooms.pop(k)
            else:
                room, pack = capacity, []
                out.append(pack)
            pack.append(i)
            room -= n
            if room > 0:
                if not by_room[room]:
                    bisect.insort(rooms, room)
                by_room[room].append(pack)
    return out


def pack_rows(rows: list[dict[str, list[int]]], capacity: int) -> list[dict[str, list[int]]]:
    """Tokenised rows packed as TRL packs them (its BFD packs; rows with no loss token dropped first, as TRL does),
    each pack one row: ``input_ids`` and ``labels`` joined, ``position_ids`` restarting at 0 for each example (an
    ``attention_mask`` of ones too, without which Axolotl does not take a row as tokenised; the shipped plugin's
    collator drops it, so transformers masks attention block-diagonally from the position ids), each example's
    first label -100 (TRL's padding-free collator does the same: that
    token would be predicted from the example before it)."""
    rows = [r for r in rows if any(x != -100 for x in r["labels"])]
    out = []
    for pack in bfd([len(r["input_ids"]) for r in rows], capacity):
        row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
        for i in pack:
            ids = rows[i]["input_ids"][:capacity]
            row["input_ids"] += ids
            row["labels"] += [-100, *rows[i]["labels"][1:len(ids)]]
            row["position_ids"] += list(range(len(ids)))
        row["attention_mask"] = [1] * len(row["input_ids"])  # how Axolotl tells tokenised rows; the plugin drops it
        out.append(row)
    return out


def tokenised(run_dir: Path, split: str) -> list[dict[str, list[int]]]:
    """``input_ids``, ``attention_mask`` and ``labels`` (-100 where no loss) of every record of a split, as the
    label view makes them (``core.labels``: the model's tokenizer, the template of record, ``lossmask``)."""
    import core

    out = []
    for row in core.labels.label_rows(run_dir, split):
        seq = row.sequences[0]
        out.append({"input_ids": seq.ids, "attention_mask": [1] * len(seq.ids),
                    "labels": [t if k else -100 for t, k in zip(seq.ids, seq.mask)]})
    return out


def preference_text(records: list[dict], data: Any) -> list[dict[str, str]]:
    """prompt/chosen/rejected text of preference records: the prompt rendered with the template of record and
    its generation prompt, each answer as the template renders it after that prompt."""
    from functools import partial

    from core import chatrender, lossmask

    tokenizer = data.stats.get("tokenizer")
    specials = chatrender.special_tokens(str(Path(tokenizer).parent)) if tokenizer else {}
    render = partial(chatrender.render,
                     chatrender.environment().from_string(Path(data.template).read_text(encoding="utf-8")),
                     special_tokens=specials)
    out = []
    for rec in records:
        view = lossmask.renderer(render, rec.get("tools"))
        prompt = view(rec["prompt"], True)
        row = {"prompt": prompt}
        for side in ("chosen", "rejected"):
            full = view(rec["prompt"] + rec[side], False)
            if not full.startswith(prompt):
                raise ValueError("the chat template renders the prompt differently once an answer follows; "
                                 "use another data.chat_template")
            row[side] = full[len(prompt):]
        out.append(row)
    return out


def steps_of(job: Any, rows: int) -> int:
    """Optimiser steps of an unpacked job (as Hugging Face counts them)."""
    t = job.train
    if t.max_steps > 0:
        return int(t.max_steps)
    return max(1, math.ceil(t.epochs * math.ceil(math.ceil(rows / t.batch_size) / t.grad_accum)))


def relpath(path: Any, start: Any) -> str:
    """``path`` relative to ``start``."""
    return os.path.relpath(str(path), str(start))
