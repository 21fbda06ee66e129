"""``python -m core.estimate [overrides]``: what a job will take, before it runs (also printed by ``plan_only``).

For the job as configured on its backend: trainable parameters (LoRA counted from the model's ``config.json``:
rank, target modules, shapes; no weights loaded); GPU memory of weights, adapter, gradients, optimiser state,
activations and logits, and whether it fits the GPU this machine shows; training tokens and optimiser steps from
the prepared data; time from measured throughput (``core/assets/measured.json``) scaled by the 6·N FLOPs per
token of the model; a remote backend's cost. How an engine spends memory is its backend's ``memory`` profile
(``core.MemoryProfile``); a backend without one gets no memory figure. The memory model and its check against
measured peaks are in docs/tools.md.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from core import runproto
from core.launch import world_size

MEASURED = Path(__file__).parent.parent / "assets" / "measured.json"
"""Measured peaks and throughput (from docs/benchmarks.md, with date, device and section)."""
GIB = 2**30
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
"""Bytes per weight of a 4-bit NF4 base: 4 bits, an 8-bit scale per 64 weights, an fp32 scale per 256 scales."""
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The linear layers of a decoder layer (Llama's names; Mistral, Qwen, Gemma and others use the same)."""


# -- the model's shape --------------------------------------------------------------------------------


def config_json(name_or_path: str) -> tuple[dict | None, str]:
    """The model's ``config.json`` from its directory or the Hugging Face cache, and where it was (or why not)."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        hub = Path(os.environ.get("HF_HUB_CACHE")
                   or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub").expanduser()
        repo = hub / f"models--{name_or_path.replace('/', '--')}"
        ref = repo / "refs" / "main"
        path = repo / "snapshots" / ref.read_text().strip() if ref.is_file() else repo
    file = path / "config.json"
    if not file.is_file():
        return None, (f"{name_or_path} is neither a local model directory nor in the Hugging Face cache: its "
                      "config.json is needed for parameters, memory and time (download it, or give a local path)")
    return json.loads(file.read_text()), str(file)


def shape(hf: dict) -> dict[str, Any]:
    """Widths and parameter count of a decoder-only model with a gated MLP (Llama, Mistral, Qwen ...)."""
    hf = {**hf, **(hf.get("text_config") or {})}
    h, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    hd = int(hf.get("head_dim") or h // heads)
    kv = int(hf.get("num_key_value_heads") or heads)
    i, layers, vocab = int(hf["intermediate_size"]), int(hf["num_hidden_layers"]), int(hf["vocab_size"])
    q, k = heads * hd, kv * hd
    linear = {"q_proj": (h, q), "k_proj": (h, k), "v_proj": (h, k), "o_proj": (q, h),
              "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}  # name -> (in, out)
    bias = (q + 2 * k) if hf.get("attention_bias") or hf.get("model_type") in ("qwen2",) else 0
    per_layer = sum(a * b for a, b in linear.values()) + bias + 2 * h
    tied = bool(hf.get("tie_word_embeddings", False))
    params = vocab * h * (1 if tied else 2) + layers * per_layer + h
    return {"hidden": h, "intermediate": i, "layers": layers, "vocab": vocab, "q": q, "kv": k, "tied": tied,
            "linear": linear, "params": params, "layer_linear_params": layers * sum(a * b for a, b in linear.values()),
            "architecture": (hf.get("architectures") or [hf.get("model_type", "?")])[0]}


def adapted(targets: list[str], s: dict) -> dict[str, tuple[int, int]]:
    """The linear layers LoRA adapts in one decoder layer (``lm_head`` separately): name -> (in, out)."""
    if list(targets) == ["all-linear"]:
        return dict(s["linear"])
    return {t: s["linear"][t] for t in targets if t in s["linear"]}


def lora_params(peft: Any, s: dict) -> int:
    """Trainable parameters of LoRA/DoRA: r·(in + out) per adapted layer (DoRA adds a magnitude per output)."""
    per_layer = sum(peft.r * (a + b) + (b if peft.type == "dora" else 0)
                    for a, b in adapted(list(peft.target_modules), s).values())
    head = peft.r * (s["hidden"] + s["vocab"]) if "lm_head" in peft.target_modules else 0
    return s["layers"] * per_layer + head


# -- memory ----------------------------------------------------------------------------------------------


def dtype_bytes(name: str) -> int:
    return {"fp32": 4, "float32": 4}.get(name, 2)


def tokens_per_micro_batch(job: Any, stats: dict) -> int:
    """Tokens of the largest micro-batch on one device: packed rows fill ``max_length``; unpacked ones are padded
    to the batch's longest row (the longest of the data, at worst); a preference pair is two sequences."""
    t, m = job.train, job.method
    longest = ((stats.get("tokens") or {}).get("train") or {}).get("max") or t.max_length
    length = t.max_length if m.name == "sft" and m.packing else min(t.max_length, longest)
    return t.batch_size * length * (2 if m.name in ("dpo", "orpo") else 1)


def memory(job: Any, profile: Any, s: dict, stats: dict) -> dict[str, Any]:
    """Peak GPU memory per device, by part (bytes), under the backend's memory profile."""
    t, p = job.train, job.peft
    elem = dtype_bytes(t.precision)
    load = elem if job.model.dtype == "auto" else dtype_bytes(job.model.dtype)
    adam = t.optimizer == "adamw"
    parts: dict[str, float] = {}
    shards = world_size(job) if t.strategy in ("fsdp", "deepspeed") else 1
    if p.type == "none":
        master = 4 if profile.fp32_master else elem
        parts["weights"] = s["params"] * master
        parts["gradients"] = s["params"] * master
        parts["optimiser"] = s["params"] * master * 2 if adam else 0
        if profile.fp32_master and elem == 2:
            parts["weights"] += s["params"] * elem  # the half-precision copy autocast keeps for the step
        if job.method.name in ("dpo", "kto"):
            parts["weights"] += s["params"] * elem  # the frozen reference model
    else:
        rest = s["params"] - s["layer_linear_params"]
        parts["weights"] = (s["layer_linear_params"] * NF4_BYTES + rest * load if p.type == "qlora"
                            else s["params"] * load)
        a = 4 if profile.fp32_adapter else elem
        n = lora_params(p, s)
        parts["adapter"], parts["gradients"], parts["optimiser"] = n * a, n * a, (n * a * 2 if adam else 0)
    for k in parts:
        parts[k] /= shards
    tokens = tokens_per_micro_batch(job, stats)
    h, i, q, kv, layers = s["hidden"], s["intermediate"], s["q"], s["kv"], s["layers"]
    per_token_layer = profile.activations * (4 * h + 2 * q + 2 * kv + 4 * i) * elem
    if profile.adapter_input_copy and p.type in ("lora", "dora"):
        per_token_layer += elem * sum(a for a, _ in adapted(list(p.target_modules), s).values())
    logits = tokens * s["vocab"] * profile.logits * elem / 2
    if t.gradient_checkpointing:
        saved = 0 if profile.offload_checkpoints else layers * tokens * h * elem
        parts["activations"] = saved + max(logits, tokens * per_token_layer) - logits
    else:
        parts["activations"] = layers * tokens * per_token_layer
    parts["logits"] = logits
    total = sum(parts.values())
    return {"parts": {k: round(v) for k, v in parts.items()}, "total": round(total), "tokens_per_micro_batch": tokens,
            "activation_bytes_per_token_layer": round(per_token_layer), "shards": shards}


def gpus() -> list[dict[str, Any]]:
    """The GPUs ``nvidia-smi`` shows (name, memory in bytes); empty without one."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [line.rsplit(",", 1) for line in out.strip().splitlines() if "," in line]
    return [{"name": n.strip(), "memory": int(float(m)) * 2**20} for n, m in rows]


# -- tokens, steps, time -----------------------------------------------------------------------------------


def steps_and_tokens(job: Any, stats: dict) -> tuple[int, int, str]:
    """(optimiser steps, training tokens, how they were counted) from the prepared data."""
    t, m = job.train, job.method
    world = world_size(job)
    rows = int(stats["rows"]["train"])
    tok = (stats.get("tokens") or {}).get("train") or {}
    if m.name == "sft" and m.packing:
        per_step = t.batch_size * t.max_length * t.grad_accum * world
        total = int(tok.get("total") or rows * t.max_length)
        steps = t.max_steps if t.max_steps > 0 else max(1, math.ceil(total * t.epochs / per_step))
        return steps, steps * per_step, f"packed: {per_step:,} tokens per step (batch x max_length x accum x devices)"
    steps, _ = runproto.steps_and_passes(rows, t.batch_size * world, t.grad_accum, t.max_steps, t.epochs)
    examples = steps * t.batch_size * t.grad_accum * world
    mean = float(tok.get("mean") or 0)
    return steps, round(examples * mean), f"{examples:,} examples x {mean:.0f} mean tokens (data/stats.json)"


def measured() -> dict[str, Any]:
    return json.loads(MEASURED.read_text())


def throughput(backend: str, job: Any, s: dict, gpu: str | None) -> dict[str, Any] | None:
    """Tokens/s for the job from the nearest measured row (this backend, same PEFT kind and checkpointing first),
    scaled by the ratio of 6·N FLOPs per token (N: the measured model's parameters over this one's)."""
    data = measured()
    kind = {"dora": "lora"}.get(job.peft.type, job.peft.type)
    rows = [r for r in data["throughput"] if r["backend"] == backend]
    if not rows:
        return None

    def score(r: dict) -> tuple:
        return (r["peft"] == kind, r["gradient_checkpointing"] == bool(job.train.gradient_checkpointing),
                bool(gpu) and r["device"] == gpu, r["date"])

    row = max(rows, key=score)
    n_ref = data["models"][row["model"]]["parameters"]
    world = world_size(job)
    tps = row["tokens_per_s"] * n_ref / s["params"] * world
    differs = [w for w, same in (("PEFT " + row["peft"], row["peft"] == kind),
                                 ("checkpointing " + str(row["gradient_checkpointing"]).lower(),
                                  row["gradient_checkpointing"] == bool(job.train.gradient_checkpointing)))
               if not same]
    how = (f"{row['tokens_per_s']:,} tokens/s measured on {row['device']} ({backend}, {row['model']}, {row['shape']}, "
           f"{row['date']}) x 6N ratio {n_ref:,}/{s['params']:,}"
           + (f" x {world} devices" if world > 1 else "")
           + (f"; that row differs in {', '.join(differs)}" if differs else "")
           + ("" if gpu == row["device"] else f"; not scaled to {gpu or 'this machine (no GPU seen)'}"))
    return {"tokens_per_s": round(tps), "how": how}


# -- the whole estimate -------------------------------------------------------------------------------------


def of(job: Any, trainer: Any, stats: dict, plan_dir: Path | None = None) -> dict[str, Any]:
    """The estimate of a checked job (``runner.Job``'s config and trainer) from its prepared data's statistics."""
    backend = trainer.name
    out: dict[str, Any] = {"backend": backend, "notes": []}
    cost = trainer.cost(plan_dir) if plan_dir is not None else None
    if cost:
        out["cost"] = cost
    local = "device" in type(trainer).capabilities.needs or "weights" in type(trainer).capabilities.needs
    if not local:
        out.update(steps=None, training_tokens=(cost or {}).get("billed_tokens"),
                   tokens_how="billed, as the service counts them (its tokenizer, its batches)")
        out["notes"].append(f"{backend} trains remotely: no local memory or time")
        return out
    steps, tokens, how = steps_and_tokens(job, stats)
    out.update(steps=steps, training_tokens=tokens, tokens_how=how)
    hf, where = config_json(str(job.model.name_or_path))
    if hf is None:
        out["notes"].append(where)
        return out
    try:
        s = shape(hf)
    except KeyError as exc:
        out["notes"].append(f"{where} lacks {exc} (not a decoder-only model this estimate knows): no parameters, "
                            "memory or time")
        return out
    out["model"] = {"config": where, "architecture": s["architecture"], "parameters": s["params"],
                    "layers": s["layers"], "hidden": s["hidden"], "vocab": s["vocab"]}
    out["trainable_parameters"] = s["params"] if job.peft.type == "none" else lora_params(job.peft, s)
    unknown = [t for t in job.peft.target_modules if t not in s["linear"] and t not in ("all-linear", "lm_head")]
    if job.peft.type != "none" and unknown:
        out["notes"].append(f"peft.target_modules {unknown} are not among {', '.join(LINEARS)}: not counted")
    seen = gpus()
    gpu = seen[0] if seen else None
    profile = getattr(type(trainer), "memory", None)
    if profile is None:
        out["notes"].append(f"backend {backend} declares no memory profile: no memory estimate")
    else:
        mem = memory(job, profile, s, stats)
        mem["profile"] = profile.source
        if job.train.device == "cpu":
            mem["fits"] = None
            mem["device"] = "cpu (host memory; the figure is the GPU model's)"
        elif gpu:
            mem["device"] = f"{gpu['name']} {gpu['memory'] / GIB:.0f} GiB"
            mem["fits"] = mem["total"] <= gpu["memory"] * 0.95
        else:
            mem["device"] = "no GPU seen (nvidia-smi)"
            mem["fits"] = None
        out["memory"] = mem
    tp = throughput(backend, job, s, gpu["name"] if gpu else None) if job.train.device != "cpu" else None
    if tp:
        out["time"] = {**tp, "seconds": round(tokens / tp["tokens_per_s"])}
    else:
        out["notes"].append(f"no measured throughput for {backend} on {job.train.device}: no time estimate")
    return out


def safe(job: Any, trainer: Any, stats: dict, plan_dir: Path | None = None) -> dict[str, Any]:
    """:func:`of`, with a failure of the estimate itself recorded instead of raised (a plan never fails on it)."""
    try:
        return of(job, trainer, stats, plan_dir)
    except Exception as exc:
        return {"backend": getattr(trainer, "name", "?"), "notes": [f"estimate failed: {type(exc).__name__}: {exc}"]}


# -- printing -----------------------------------------------------------------------------------------------


def gib(n: float) -> str:
    """Bytes as GiB, or MiB below one GiB."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def table(est: dict[str, Any]):
    """The estimate as a rich table."""
    from rich.table import Table

    tab = Table(title=f"estimate ({est['backend']})", title_justify="left", box=None, show_header=False,
                pad_edge=False)
    tab.add_column(style="bold")
    tab.add_column(overflow="fold")
    model = est.get("model")
    if model:
        tab.add_row("model", f"{model['architecture']}, {model['parameters']:,} parameters, {model['layers']} layers, "
                             f"hidden {model['hidden']}, vocab {model['vocab']:,}")
    if "trainable_parameters" in est:
        share = est["trainable_parameters"] / model["parameters"] if model else 0
        tab.add_row("trainable", f"{est['trainable_parameters']:,} ({share:.2%})")
    mem = est.get("memory")
    if mem:
        parts = ", ".join(f"{k} {gib(v)}" for k, v in mem["parts"].items() if v)
        fits = {True: "[green]fits[/]", False: "[red]does not fit[/]", None: ""}[mem["fits"]]
        tab.add_row("memory", f"[bold]{gib(mem['total'])}[/] per device {fits} ({mem['device']})\n  {parts}\n"
                              f"  {mem['tokens_per_micro_batch']:,} tokens per micro-batch; {mem['profile']}")
    if est.get("training_tokens") is not None:
        steps = f" in {est['steps']:,} optimiser steps" if est.get("steps") else ""
        tab.add_row("tokens", f"{est['training_tokens']:,}{steps} ({est['tokens_how']})")
    if est.get("time"):
        tab.add_row("time", f"[bold]{duration(est['time']['seconds'])}[/] at {est['time']['tokens_per_s']:,} tokens/s\n"
                            f"  {est['time']['how']}")
    cost = est.get("cost")
    if cost and cost.get("usd") is not None:
        tab.add_row("cost", f"[bold]${cost['usd']:.2f}[/] ({cost.get('billed_tokens', 0):,} billed tokens x "
                            f"${cost.get('usd_per_1m_tokens')}/1M; {cost.get('price_source', '')})")
    for note in est.get("notes", []):
        tab.add_row("note", note)
    return tab
