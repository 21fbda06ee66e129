"""How the conformance suite reads each first-party engine's own effective configuration (test side).

``TrlFields`` and ``TorchtuneFields`` give :class:`core.conformance.fields.FieldsReachEngine` its
``FIELD_MAP`` (canonical field -> where the engine holds it, written here by hand, never taken from
the translation) and ``effective_configs`` (built from a plan as the engine builds it). The suite mixes
them into the backend's conformance class; ``tests/test_conformance.py`` runs them.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Callable, Mapping

from omegaconf import DictConfig

from core.conformance.fields import (TRAINER_FIELD_MAP, Expect, FieldsReachEngine, agree, at, constant, dtype_of,
                                     load_plan_module, steps_of, targets_of, template_of, warmup_steps_of)

HERE = Path(__file__).resolve().parent


def count_rows(path: Path) -> int:
    """Records of a JSONL file."""
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


# -- TRL --------------------------------------------------------------------------------------------------

TRL_METHODS = {"SFTConfig": "sft", "DPOConfig": "dpo", "ORPOConfig": "orpo", "KTOConfig": "kto",
               "SFTTrainer": "sft", "DPOTrainer": "dpo", "ORPOTrainer": "orpo", "KTOTrainer": "kto"}
"""TRL's config and trainer classes -> canonical method.name."""


def _trl_method(e: Mapping[str, Any], job: DictConfig) -> Any:
    a = e["args"]
    by_config, by_trainer = TRL_METHODS.get(type(a).__name__), TRL_METHODS.get(e["trainer_class"].__name__)
    if by_config != by_trainer:
        return ("config", type(a).__name__, "trainer", e["trainer_class"].__name__)
    if by_config == "sft" and a.loss_type != "nll":  # SFT is token cross-entropy (TRL also has "dft")
        return ("sft with loss_type", a.loss_type)
    return by_config


def _trl_completion_only(e: Mapping[str, Any], job: DictConfig) -> Any:
    a = e["args"]
    if a.assistant_only_loss:  # the mask is the tokenised completion_mask; TRL's own would replace it
        return ("assistant_only_loss",)
    return agree(at("args.completion_only_loss"), at("completion_only"))(e, job)


def _trl_packing(e: Mapping[str, Any], job: DictConfig) -> Any:
    a = e["args"]
    if getattr(a, "padding_free", False) and not a.packing:  # rows flattened into one: packing by another name
        return ("padding_free without packing",)
    return a.packing


def _trl_loss_type(e: Mapping[str, Any], job: DictConfig) -> Any:
    a = e["args"]
    kinds = list(a.loss_type) if isinstance(a.loss_type, (list, tuple)) else [a.loss_type]
    if getattr(a, "label_smoothing", 0.0):  # conservative DPO: another objective than the named one
        return ("label_smoothing", a.label_smoothing)
    return kinds[0] if len(kinds) == 1 else kinds


def _trl_max_length(e: Mapping[str, Any], job: DictConfig) -> Any:
    a = e["args"]
    if getattr(a, "truncation_mode", "keep_start") != "keep_start":  # every engine cuts the end
        return ("truncation_mode", a.truncation_mode)
    return agree(at("args.max_length"), at("max_length"))(e, job)


class TrlFields(FieldsReachEngine):
    """TRL: the method's ``SFTConfig``/``DPOConfig``/``ORPOConfig`` as the plan's worker builds it (after
    ``__post_init__``), peft's ``LoraConfig``, the model's loading kwargs and the tokenizer."""

    FIELD_MAP = {
        **TRAINER_FIELD_MAP,
        "method.name": _trl_method,
        "method.completion_only_loss": _trl_completion_only,
        "method.packing": _trl_packing,
        "method.beta": at("args.beta"),
        "method.loss_type": _trl_loss_type,
        "train.max_length": _trl_max_length,
    }

    def effective_config(self, run_dir: Path) -> Mapping[str, Any]:
        """``settings()`` of the plan's own worker (``plan/trl_worker.py``), run in the run directory."""
        worker = load_plan_module(run_dir / "plan" / "trl_worker.py", f"trl_worker_{run_dir.name}")
        spec = json.loads((run_dir / "plan" / "trl_args.json").read_text())
        with contextlib.chdir(run_dir):
            settings = worker.settings(spec)
        command = json.loads((run_dir / "plan" / "command.json").read_text())["command"]
        return {**settings, "rows": count_rows(run_dir / "data" / "train.jsonl"), "command": command}


# -- torchtune --------------------------------------------------------------------------------------------

TT_MODULES = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "output_proj": "o_proj",
              "w1": "gate_proj", "w2": "down_proj", "w3": "up_proj", "output": "lm_head"}
"""torchtune's Llama module names -> Hugging Face's (torchtune's convert_weights: w1 gate, w2 down, w3 up)."""
TT_RECIPES = {"LoRAFinetuneRecipeSingleDevice": "sft", "FullFinetuneRecipeSingleDevice": "sft",
              "LoRADPORecipeSingleDevice": "dpo"}
"""torchtune's recipe classes -> canonical method.name."""
TT_LOSSES = {"DPOLoss": "sigmoid", "RSOLoss": "hinge"}
"""torchtune's preference losses -> canonical method.loss_type (RSO is the hinge loss of DPO)."""
TT_PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _one(values: list) -> Any:
    """The value every adapter module holds, or all of them when they differ."""
    distinct = sorted(set(values))
    return distinct[0] if len(distinct) == 1 else ("differ", *distinct)


def _adapters(e: Mapping[str, Any], key: str) -> Any:
    return _one([a[key] for a in e["model"]["adapters"]])


def _tt_peft_type(e: Mapping[str, Any], job: DictConfig) -> str:
    adapters = e["model"]["adapters"]
    if not adapters:
        return "none"
    if any(a["quantized"] for a in adapters):
        return "qlora" if not any(a["dora"] for a in adapters) else "qdora"
    return "dora" if all(a["dora"] for a in adapters) else "lora" if not any(a["dora"] for a in adapters) else "mixed"


def _tt_name_or_path(e: Mapping[str, Any], job: DictConfig) -> tuple:
    return (str(Path(e["checkpoint_dir"]).resolve()), str(Path(e["tokenizer"]["args"]["path"]).resolve()),
            e["model"]["embed_dim"], e["model"]["num_layers"])


def _model_dims(job: DictConfig, e: Mapping[str, Any]) -> tuple:
    path = Path(job.model.name_or_path).resolve()
    config = json.loads((path / "config.json").read_text())
    return (str(path), str(path), config["hidden_size"], config["num_hidden_layers"])


def _tt_beta(e: Mapping[str, Any], job: DictConfig) -> Any:
    loss = e["loss"]
    return loss["beta"] if loss["class"] == "DPOLoss" else loss.get("gamma")


def _tt_loss_type(e: Mapping[str, Any], job: DictConfig) -> Any:
    loss = e["loss"]
    if loss.get("label_smoothing"):
        return ("label_smoothing", loss["label_smoothing"])
    return TT_LOSSES.get(loss["class"], loss["class"])


def _tt_max_grad_norm(e: Mapping[str, Any], job: DictConfig) -> Any:
    recipe, optimiser = e["clip_grad_norm"], e["optimizer"]["max_grad_norm"]
    if recipe is not None and optimiser is not None:
        return ("clipped twice", recipe, optimiser)
    value = recipe if recipe is not None else optimiser
    return 0.0 if value is None else float(value)  # canonical 0 = no clipping


def _sequential(order: list[int] | None) -> bool:
    return order is not None and all(b == a + 1 or b == 0 for a, b in zip(order, order[1:]))


def _tt_shuffle(e: Mapping[str, Any], job: DictConfig) -> bool:
    return e["sampler_shuffle"] or not _sequential(e["dataset"]["order"])


def _warmup_of(factors: list[float]) -> int:
    """Warm-up steps of a schedule: the first step at its peak."""
    return factors.index(max(factors)) if factors else 0


def _hf_factors(job: DictConfig, e: Mapping[str, Any]) -> list[float]:
    """transformers' own schedule of the job's name and warm-up over the engine's step count."""
    import torch
    from transformers import get_scheduler

    total = e["total_steps"]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_scheduler(job.train.lr_scheduler, opt, num_warmup_steps=warmup_steps_of(job, total),
                          num_training_steps=total)
    return [sched.lr_lambdas[0](s) for s in range(total)]


def _steps(job: DictConfig, e: Mapping[str, Any]) -> int:
    """Steps the job asks for; with packing an epoch is a pass over the packs (as for every engine)."""
    return steps_of(job, e["dataset"]["packs"] if job.method.packing else e["rows"])


def _tt_targets(e: Mapping[str, Any], job: DictConfig) -> list[str]:
    return sorted({TT_MODULES.get(a["name"].rsplit(".", 1)[-1], a["name"]) for a in e["model"]["adapters"]})


class TorchtuneFields(FieldsReachEngine):
    """torchtune: the recipe ``tune run`` would run, set up from the plan in torchtune's own environment
    (``tests/torchtune_effective.py``, one process for every plan), and what it holds."""

    FIELD_MAP = {
        "model.name_or_path": Expect(_tt_name_or_path, _model_dims),
        "model.dtype": Expect(at("dtype"), lambda job, e: dtype_of(job)),  # one dtype: auto = the precision's
        "data.chat_template": Expect(at("tokenizer.chat_template"), lambda job, e: template_of(job)),
        "data.kind": lambda e, job: "preference" if e["dataset"]["preference"] else e["dataset"]["args"]["kind"],
        "data.eval": at("validation"),
        "method.name": at("recipe_class", lambda c: TT_RECIPES.get(c, c)),
        "method.completion_only_loss": at("dataset.args.completion_only_loss"),
        "method.packing": at("collate", lambda name: name == "padded_collate_packed"),
        "method.beta": _tt_beta,
        "method.loss_type": _tt_loss_type,
        "peft.type": _tt_peft_type,
        "peft.r": lambda e, job: _adapters(e, "rank"),
        "peft.alpha": lambda e, job: _adapters(e, "alpha"),
        "peft.dropout": lambda e, job: _adapters(e, "dropout"),
        "peft.target_modules": Expect(_tt_targets, lambda job, e: targets_of(job)),
        "train.epochs": Expect(at("total_steps"), lambda job, e: _steps(job, e)),
        "train.max_steps": Expect(at("total_steps"), lambda job, e: _steps(job, e)),
        "train.batch_size": at("batch_size"),
        "train.grad_accum": at("grad_accum"),
        "train.learning_rate": at("optimizer.lr"),
        "train.lr_scheduler": Expect(at("lr_factors"), _hf_factors),
        "train.warmup_ratio": Expect(lambda e, job: _warmup_of(e["lr_factors"]),
                                     lambda job, e: warmup_steps_of(job, e["total_steps"])),
        "train.weight_decay": at("optimizer.weight_decay"),
        "train.optimizer": at("optimizer.class", lambda c: {"AdamW": "adamw", "SGD": "sgd"}.get(c, c)),
        "train.max_grad_norm": _tt_max_grad_norm,
        "train.max_length": at("tokenizer.max_seq_len"),
        "train.precision": at("dtype", lambda d: TT_PRECISION.get(d, d)),
        "train.gradient_checkpointing": agree(at("activation_checkpointing"), at("checkpoint_wrapped")),
        "train.device": at("device"),
        "train.seed": agree(at("seed"), at("dataset.args.seed")),
        "train.shuffle": _tt_shuffle,
        "train.logging_steps": at("log_every_n_steps"),
        "train.save_artifacts": at("metric_logger.artifacts", lambda a: a != "none"),
        "train.save_steps": at("optimizer.save_steps"),
        "train.devices": at("launch.nproc_per_node"),
        "train.nodes": at("launch.nnodes"),
        # several processes: FSDP2 resharding after forward (fsdp) or not (ddp); one process: nothing to shard
        "train.strategy": Expect(lambda e, job: ("one process" if e["launch"]["world"] == 1 else
                                                 "fsdp" if e["reshard_after_forward"] is True else
                                                 "ddp" if e["reshard_after_forward"] is False else
                                                 ("reshard_after_forward", e["reshard_after_forward"])),
                                 lambda job, e: (job.train.strategy if job.train.devices * job.train.nodes > 1
                                                 else "one process")),
    }

    def effective_configs(self, run_dirs: list[Path]) -> list[Mapping[str, Any]]:
        """Every plan's recipe set up in one process of torchtune's interpreter (the backend's ``python()``)."""
        from core import plugins
        from core.conformance.jobs import compose

        if not run_dirs:
            return []
        python = plugins.registry().backend("torchtune")(compose(["backend=torchtune"])).python()
        out = run_dirs[0].parent / "torchtune-effective.json"
        proc = subprocess.run([python, str(HERE / "torchtune_effective.py"), str(out), *map(str, run_dirs)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                   "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"})
        assert proc.returncode == 0, f"torchtune_effective.py failed:\n{proc.stderr[-4000:]}"
        return json.loads(out.read_text())

# -- Axolotl ----------------------------------------------------------------------------------------------

AX_METHODS = {"AxolotlTrainer": "sft", "AxolotlDPOTrainer": "dpo", "AxolotlORPOTrainer": "orpo"}
"""Axolotl's trainer classes -> canonical method.name."""
AX_OPTIMIZERS = {"adamw_torch": "adamw", "adamw_torch_fused": "adamw", "sgd": "sgd"}


def _ax_batch(job: DictConfig) -> int:
    """Rows of one micro-step: ``train.batch_size`` per process (what one process reads at the same batch × W)."""
    t = job.train
    return t.batch_size * t.get("devices", 1) * t.get("nodes", 1)


def _ax_expected_rows(e: Mapping[str, Any], job: DictConfig, **change: Any) -> list[dict]:
    """The training rows the job means, in its example order: anytune's label view of the run's data
    (``core.data.labels``: the model's tokenizer, the template of record, ``core.lossmask``), passes seeded with
    ``train.seed + p`` (``runproto.example_order``); ``change`` overrides seed/shuffle."""
    from core import runproto
    from core.data import labels

    key = ("_expected", tuple(sorted(change.items())))
    cache = e.setdefault("_cache", {})
    if key not in cache:
        rows = [r.sequences[0] for r in labels.label_rows(e["run_dir"], "train")]
        t = job.train
        steps = steps_of(job, len(rows))
        idx = runproto.example_order(len(rows), steps, _ax_batch(job), t.grad_accum, change.get("seed", t.seed),
                                     change.get("shuffle", bool(t.shuffle)))
        cache[key] = [{"input_ids": rows[i].ids, "labels": [x if k else -100 for x, k in zip(rows[i].ids,
                                                                                              rows[i].mask)]}
                      for i in idx]
    return cache[key]


def _ax_sft(e: Mapping[str, Any]) -> bool:
    return not e["cfg"]["rl"]


def _ax_packed(e: Mapping[str, Any]) -> bool:
    """The engine's rows are packs: ``position_ids`` restarting at 0 inside a row."""
    return any(r.get("position_ids", [0])[1:].count(0) for r in e["rows"] or [])


def _ax_segments(row: Mapping[str, list[int]]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The examples of a packed row: (input_ids, labels) of each run of ``position_ids`` starting at 0."""
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["position_ids"])]
    return [(tuple(row["input_ids"][a:b]), tuple(row["labels"][a:b])) for a, b in zip(starts, starts[1:])]


def _ax_packs_hold_the_examples(e: Mapping[str, Any], job: DictConfig) -> Any:
    """Packed rows hold exactly the label view's examples that carry loss, each example's positions from 0 and its
    first label -100 (it would be predicted from the example before it), no pack over ``train.max_length``; the
    model is handed no attention mask (so transformers masks block-diagonally by the position ids)."""
    from core.data import labels

    want = set()
    for r in labels.label_rows(e["run_dir"], "train"):
        seq = r.sequences[0]
        lab = [x if k else -100 for x, k in zip(seq.ids, seq.mask)]
        if any(x != -100 for x in lab):
            want.add((tuple(seq.ids), tuple([-100, *lab[1:]])))
    got = {seg for row in e["rows"] for seg in _ax_segments(row)}
    if got != want:
        return ("packs hold other examples", len(got - want), len(want - got))
    if max(len(r["input_ids"]) for r in e["rows"]) > job.train.max_length:
        return ("a pack over train.max_length",)
    if "attention_mask" in (e["collated"] or []) or "position_ids" not in (e["collated"] or []):
        return ("the model is handed", e["collated"])
    return True


def _ax_pack_order(e: Mapping[str, Any], job: DictConfig, seed: int, shuffle: bool) -> bool:
    """Packed rows in the job's order over the packs: ``runproto.example_order`` over the distinct packs (pass ``p``
    seeded with ``seed + p``), the first pass telling which pack is which."""
    from core import runproto

    rows = [tuple(r["input_ids"]) for r in e["rows"]]
    n, t = len(set(rows)), job.train
    idx = runproto.example_order(n, len(rows) // (_ax_batch(job) * t.grad_accum), _ax_batch(job), t.grad_accum, seed,
                                 shuffle)
    base: dict[int, tuple] = {}
    for i, row in zip(idx, rows):
        if base.setdefault(i, row) != row:
            return False
    return len(base) == n and len(idx) == len(rows)


def _ax_rows_are_the_jobs(e: Mapping[str, Any], job: DictConfig) -> bool:
    if _ax_packed(e):
        return _ax_packs_hold_the_examples(e, job) is True and _ax_pack_order(e, job, job.train.seed,
                                                                            bool(job.train.shuffle))
    return e["rows"] == _ax_expected_rows(e, job)


def _ax_kind(e: Mapping[str, Any], job: DictConfig) -> Any:
    if not _ax_sft(e):
        first = (e["rows"] or [{}])[0]
        return "preference" if {"prompt", "chosen", "rejected"} <= set(first) else ("rows", sorted(first))
    if not _ax_rows_are_the_jobs(e, job):
        return ("the engine's rows are not the label view of the data",)
    return json.loads((Path(e["run_dir"]) / "data" / "stats.json").read_text())["kind"]


def _ax_completion_only(e: Mapping[str, Any], job: DictConfig) -> Any:
    if not _ax_rows_are_the_jobs(e, job):
        return ("the engine's rows are not the label view of the data",)
    if _ax_packed(e):  # each example's first label is -100 in a pack (it would be predicted across examples)
        pairs = [p for row in e["rows"] for ids, lab in _ax_segments(row) for p in zip(ids[1:], lab[1:])]
    else:
        pairs = [p for r in e["rows"] for p in zip(r["input_ids"], r["labels"])]
    masked = any(y == -100 for _, y in pairs)
    full = all(x == y for x, y in pairs)
    kind = json.loads((Path(e["run_dir"]) / "data" / "stats.json").read_text())["kind"]
    if kind == "text":  # a text row carries loss everywhere either way
        return job.method.completion_only_loss if full else ("masked text",)
    return masked and not full if masked else False


def _ax_seed(e: Mapping[str, Any], job: DictConfig) -> Any:
    seed = e["args"]["seed"]
    if _ax_sft(e) and job.train.shuffle:
        ordered = (_ax_pack_order(e, job, seed, True) if _ax_packed(e)
                   else e["rows"] == _ax_expected_rows(e, job, seed=seed))
        if not ordered:
            return ("rows not in the order of seed", seed)
    return seed


def _ax_shuffle(e: Mapping[str, Any], job: DictConfig) -> Any:
    if e["sampler"] != "SequentialSampler":  # the rows are in order; a random sampler would reshuffle them
        return ("sampler", e["sampler"])
    if not _ax_sft(e):
        return bool(e["settings"]["order"]["shuffle"])
    for shuffle in (False, True):
        if (_ax_pack_order(e, job, job.train.seed, shuffle) if _ax_packed(e)
                else e["rows"] == _ax_expected_rows(e, job, shuffle=shuffle)):
            return shuffle
    return ("rows in neither order",)


def _ax_packing(e: Mapping[str, Any], job: DictConfig) -> Any:
    """anytune packs (TRL's packs, in the job's order over them) and Axolotl reads the packs as rows; its own
    multipack sampler stays off."""
    if e["cfg"]["sample_packing"]:
        return ("Axolotl's multipack packs too",)
    if not _ax_sft(e) or not _ax_packed(e):
        return False
    held = _ax_packs_hold_the_examples(e, job)
    return held if held is not True else e["collator"] == "PackedCollator" or ("collator", e["collator"])


def _ax_steps(e: Mapping[str, Any], job: DictConfig) -> Any:
    a = e["args"]
    if _ax_sft(e) and len(e["rows"]) != a["max_steps"] * a["per_device_train_batch_size"] * a[
            "gradient_accumulation_steps"] * e["launch"]["world"]:
        return ("rows do not fill the steps", len(e["rows"]), a["max_steps"])
    return a["max_steps"]


def _ax_units(e: Mapping[str, Any]) -> int:
    """What an epoch passes over: the records, or with packing the packs (as every engine counts them), told from
    the rows the engine holds (its distinct packs)."""
    if _ax_sft(e) and _ax_packed(e):
        return len({tuple(r["input_ids"]) for r in e["rows"]})
    return count_rows(Path(e["run_dir"]) / "data" / "train.jsonl")


def _ax_launch(key: str) -> Callable[[Mapping[str, Any], DictConfig], Any]:
    """``launch[key]``, what the plan's command starts (torchrun's parser), if the ranks' micro-batches of each
    micro-step, joined in rank order, are the micro-batch one process reads at ``batch_size × processes``: every
    rank trains its share of the job's order, each row once."""
    def read(e: Mapping[str, Any], job: DictConfig) -> Any:
        launch, shares, a = e["launch"], e["shares"], e["args"]
        if shares is not None:
            per_step = a["per_device_train_batch_size"] * launch["world"]
            micro = a["max_steps"] * a["gradient_accumulation_steps"]
            joined = [[i for rank in shares for i in rank[k]] for k in range(min(map(len, shares)))]
            if any(len(r) != micro for r in shares) or \
                    joined != [list(range(k * per_step, (k + 1) * per_step)) for k in range(micro)]:
                return ("the ranks' micro-batches are not the one-process order", joined[:2])
        return launch[key]

    return read


def _ax_strategy(e: Mapping[str, Any], job: DictConfig) -> Any:
    a = e["args"]
    return "fsdp" if a.get("fsdp") else "deepspeed" if a.get("deepspeed") else "ddp"


def _ax_peft_type(e: Mapping[str, Any], job: DictConfig) -> str:
    lora, quant = e["lora"], e.get("quantization") or {}
    if lora is None:
        return "none"
    if quant.get("load_in_4bit"):  # the loaded base's bitsandbytes config: NF4, double quantisation, as TRL's
        nf4 = (quant.get("bnb_4bit_quant_type"), quant.get("bnb_4bit_use_double_quant"))
        return "qlora" if nf4 == ("nf4", True) else ("4-bit but not NF4 with double quantisation", nf4)
    return "dora" if lora["use_dora"] else "lora"


def _ax_loss_type(e: Mapping[str, Any], job: DictConfig) -> Any:
    kinds = e["args"].get("loss_type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if e["args"].get("label_smoothing"):
        return ("label_smoothing", e["args"]["label_smoothing"])
    return kinds[0] if len(kinds) == 1 else kinds


def _ax_precision(e: Mapping[str, Any], job: DictConfig) -> Any:
    a = e["args"]
    if a["bf16"] and a["fp16"]:
        return ("bf16 and fp16",)
    return "bf16" if a["bf16"] else "fp16" if a["fp16"] else "fp32"


def _ax_name_or_path(e: Mapping[str, Any], job: DictConfig) -> tuple:
    return (str(Path(e["model_path"]).resolve()), str(Path(e["tokenizer_path"]).resolve()), *e["model_dims"])


class AxolotlFields(FieldsReachEngine):
    """Axolotl: what ``axolotl train plan/axolotl.yaml`` builds up to its first step, in Axolotl's own environment
    (``tests/axolotl_effective.py``, one process for every plan): its validated config, the Trainer's arguments,
    peft's adapter, the loaded weights, the tokenizer and the rows the Trainer reads, in its order."""

    FIELD_MAP = {
        "model.name_or_path": Expect(_ax_name_or_path, _model_dims),
        "model.dtype": Expect(lambda e, job: e["dtypes"][0] if len(e["dtypes"]) == 1 else e["dtypes"],
                              lambda job, e: dtype_of(job)),  # Axolotl loads in its precision's dtype
        "model.trust_remote_code": at("cfg.trust_remote_code"),
        "data.chat_template": Expect(at("chat_template"), lambda job, e: template_of(job)),
        "data.kind": _ax_kind,
        "data.eval": at("eval"),
        "method.name": agree(at("cfg.rl", lambda rl: rl or "sft"), at("trainer_class", lambda c: AX_METHODS.get(c, c))),
        "method.completion_only_loss": _ax_completion_only,
        "method.packing": _ax_packing,
        "method.beta": at("args.beta"),
        "method.loss_type": _ax_loss_type,
        "peft.type": _ax_peft_type,
        "peft.r": at("lora.r"),
        "peft.alpha": at("lora.lora_alpha"),
        "peft.dropout": lambda e, job: 0.0 if e["args"].get("disable_dropout") else e["lora"]["lora_dropout"],
        "peft.target_modules": Expect(at("lora.wrapped"), lambda job, e: targets_of(job)),
        "train.epochs": Expect(_ax_steps, lambda job, e: steps_of(job, _ax_units(e))),
        "train.max_steps": Expect(_ax_steps, lambda job, e: steps_of(job, _ax_units(e))),
        "train.batch_size": agree(at("args.per_device_train_batch_size"), at("args.per_device_eval_batch_size")),
        "train.grad_accum": at("args.gradient_accumulation_steps"),
        "train.learning_rate": at("args.learning_rate"),
        "train.lr_scheduler": at("args.lr_scheduler_type"),
        "train.warmup_ratio": Expect(at("warmup_steps"), lambda job, e: warmup_steps_of(job, e["args"]["max_steps"])),
        "train.weight_decay": at("args.weight_decay"),
        "train.optimizer": at("args.optim", lambda v: AX_OPTIMIZERS.get(v, v)),
        "train.max_grad_norm": at("args.max_grad_norm"),
        "train.max_length": at("cfg.sequence_len"),
        "train.precision": _ax_precision,
        "train.gradient_checkpointing": agree(at("args.gradient_checkpointing"), at("gradient_checkpointing")),
        # the Trainer's use_cpu (the shipped plugin sets it for a CPU job), as TRL's is read: a CUDA plan's
        # configuration is read on a machine without a GPU too
        "train.device": agree(at("args.use_cpu", lambda cpu: "cpu" if cpu else "cuda"),
                              at("settings.use_cpu", lambda cpu: "cpu" if cpu else "cuda")),
        "train.seed": _ax_seed,
        "train.shuffle": _ax_shuffle,
        "train.logging_steps": at("args.logging_steps"),
        "train.eval_steps": lambda e, job: e["args"]["eval_steps"] if e["args"]["eval_strategy"] == "steps" else 0,
        "train.save_artifacts": at("settings.save"),
        "train.save_steps": lambda e, job: e["args"]["save_steps"] if e["args"]["save_strategy"] == "steps" else 0,
        "train.devices": _ax_launch("nproc_per_node"),
        "train.nodes": _ax_launch("nnodes"),
        "train.strategy": _ax_strategy,
    }

    def effective_configs(self, run_dirs: list[Path]) -> list[Mapping[str, Any]]:
        """Every plan's Trainer built in one process of Axolotl's interpreter (the backend's ``python()``)."""
        from core import plugins
        from core.conformance.jobs import compose

        if not run_dirs:
            return []
        python = plugins.registry().backend("axolotl")(compose(["backend=axolotl"])).python()
        out = run_dirs[0].parent / "axolotl-effective.json"
        proc = subprocess.run([python, str(HERE / "axolotl_effective.py"), str(out), *map(str, run_dirs)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                   "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false",
                                   "AXOLOTL_DO_NOT_TRACK": "1", "CUDA_VISIBLE_DEVICES": ""})
        assert proc.returncode == 0, f"axolotl_effective.py failed:\n{proc.stderr[-4000:]}"
        return [{**e, "run_dir": str(d)} for d, e in zip(run_dirs, json.loads(out.read_text()))]



# -- OpenAI -----------------------------------------------------------------------------------------------

OPENAI_METHODS = {"supervised": "sft", "dpo": "dpo"}
"""The API's method.type -> canonical method.name."""


def _openai_hp(e: Mapping[str, Any], key: str) -> Any:
    method = e["request"]["method"]
    return method[method["type"]]["hyperparameters"][key]


def _openai_kind(e: Mapping[str, Any], job: DictConfig) -> Any:
    first = json.loads(e["files"]["training_file"].splitlines()[0])
    return "messages" if "messages" in first else "preference" if "preferred_output" in first else sorted(first)


class OpenAIFields(FieldsReachEngine):
    """OpenAI: what the ``openai`` client sends the service when the plan's own worker starts the job (the
    job-creation request and the uploaded files), captured by an in-process transport: no network."""

    FIELD_MAP = {
        "model.name_or_path": at("request.model"),
        "method.name": at("request.method.type", lambda t: OPENAI_METHODS.get(t, t)),
        "method.beta": lambda e, job: _openai_hp(e, "beta"),
        "peft.type": constant("none", "a hosted fine-tune trains the service's own way: no local adapter"),
        "train.epochs": lambda e, job: _openai_hp(e, "n_epochs"),
        "train.batch_size": lambda e, job: _openai_hp(e, "batch_size"),
        "train.seed": at("request.seed"),
        "data.kind": _openai_kind,
        "data.eval": lambda e, job: e["request"].get("validation_file") is not None,
    }

    def effective_config(self, run_dir: Path) -> Mapping[str, Any]:
        """The request and files the plan's worker (``plan/openai_worker.py``) sends, through the real client."""
        import httpx2
        from openai import OpenAI

        sent: dict[str, Any] = {"files": {}}

        def service(request: "httpx2.Request") -> "httpx2.Response":
            if request.url.path.endswith("/files"):
                fid = f"file-{len(sent['files'])}"
                sent["files"][fid] = request.content
                return httpx2.Response(200, json={"id": fid, "object": "file", "bytes": 1, "created_at": 0,
                                                  "filename": "f.jsonl", "purpose": "fine-tune", "status": "processed"})
            sent["request"] = json.loads(request.content)
            return httpx2.Response(200, json={"id": "ftjob-1", "object": "fine_tuning.job", "status": "queued",
                                              "model": sent["request"]["model"], "created_at": 0})

        worker = load_plan_module(run_dir / "plan" / "openai_worker.py", f"openai_worker_{run_dir.name}")
        spec = json.loads((run_dir / "plan" / "openai_job.json").read_text())
        client = OpenAI(api_key="sk-conformance", base_url="http://service.invalid/v1", max_retries=0,
                        http_client=httpx2.Client(transport=httpx2.MockTransport(service)))
        with contextlib.chdir(run_dir):
            worker.start(spec, client, worker.Follower(spec, client, writer=None))
        files = {name: sent["files"][sent["request"][name]].decode(errors="replace")
                 for name in ("training_file", "validation_file") if sent["request"].get(name)}
        # the multipart body holds the file's lines between its part headers: keep the JSON lines only
        files = {k: "\n".join(x for x in v.splitlines() if x.startswith("{")) for k, v in files.items()}
        return {"request": sent["request"], "files": files}


PROVIDERS: dict[str, type[FieldsReachEngine]] = {"trl": TrlFields, "torchtune": TorchtuneFields,
                                                  "axolotl": AxolotlFields,
                                                  "openai": OpenAIFields}
"""First-party backend -> the class that reads its engine's effective configuration (every first-party backend
has one: a backend missing here fails the suite's check, it is not skipped)."""
