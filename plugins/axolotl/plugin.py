"""anytune's Axolotl plugin, shipped as ``plan/anytune_axolotl.py`` and named in ``plan/axolotl.yaml``'s ``plugins``.

Axolotl imports it as ``plan.anytune_axolotl.AnytunePlugin`` from the run directory (its working directory).
Through Axolotl's own plugin hooks it:

- refuses a config key Axolotl would silently drop (``register``: the key, and the closest key Axolotl knows);
- adds a ``TrainerCallback`` that writes ``metrics.jsonl`` rows (``add_callbacks_pre_trainer``), and one that
  marks checkpoints complete and turns Ctrl-C into a checkpoint and a clean stop;
- at the end moves the weights Axolotl saved into ``output_dir`` to ``artifacts/adapter`` or
  ``artifacts/model`` and writes the outcome file; exits 130 when interrupted;
- under torchrun (``train.devices``/``train.nodes``), on CPU puts each rank's model on the CPU and makes the
  Trainer train DDP over gloo, and averages the loss, the held-out loss too, over the loss tokens of every rank
  (``register``, ``load_datasets``, ``get_training_args``, ``post_trainer_create``).

Imports Axolotl, transformers and the standard library, plus ``runproto``, ``lossmask`` and ``hfglue``
shipped beside it: an ejected plan runs where anytune is not installed.
"""
from __future__ import annotations

import difflib
import json
import os
import shutil
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import hfglue  # noqa: E402
import runproto  # noqa: E402
from axolotl.integrations.base import BasePlugin  # noqa: E402

SETTINGS = os.path.join(HERE, "anytune_axolotl.json")
"""What the plan says beside the YAML: the example order, the artefact kind, whether to keep it."""
DISTS = ("axolotl", "transformers", "trl", "peft", "torch", "datasets", "accelerate")
"""Distributions whose versions the outcome records."""


CLI_KEYS = ("shard",)
"""Keys the ``axolotl`` command writes into the config besides its argument classes' fields."""


def cli_keys() -> set[str]:
    """The fields of the ``axolotl`` command's argument classes (``axolotl.cli.args``): ``axolotl train`` copies
    its options (``debug``, ``debug_num_examples`` ...) into the config it validates."""
    import dataclasses

    from axolotl.cli import args

    return {f.name for obj in vars(args).values() if dataclasses.is_dataclass(obj) and isinstance(obj, type)
            for f in dataclasses.fields(obj)}


def model_keys(model) -> set[str]:
    """The keys a pydantic model takes: its fields and their aliases."""
    keys = set()
    for name, field in model.model_fields.items():
        keys.add(name)
        for alias in (field.alias, getattr(field, "validation_alias", None)):
            if isinstance(alias, str):
                keys.add(alias)
            for choice in getattr(alias, "choices", ()) or ():
                if isinstance(choice, str):
                    keys.add(choice)
    return keys


def known_keys() -> set[str]:
    """Every top-level key Axolotl's config model takes: its fields, their aliases, the fields the configured
    plugins add (``axolotl.integrations.config.merge_input_args``), and the ``axolotl`` command's options."""
    from axolotl.integrations.config import merge_input_args

    _, model = merge_input_args()
    return set(CLI_KEYS) | cli_keys() | model_keys(model)


def dataset_keys() -> set[str]:
    """Every key an entry of ``datasets:`` or ``test_datasets:`` takes: those of Axolotl's dataset models
    (``axolotl.utils.schemas.datasets``: SFT, DPO, KTO, pretraining ... datasets; an entry is any of them)."""
    from pydantic import BaseModel

    from axolotl.utils.schemas import datasets as schemas

    return set().union(*(model_keys(m) for m in vars(schemas).values()
                         if isinstance(m, type) and issubclass(m, BaseModel) and m.__name__.endswith("Dataset")))


def unknown_keys(cfg: dict, known: set[str] | None = None) -> list[str]:
    """Messages for the keys of ``cfg`` Axolotl would silently drop (top-level, and inside each ``datasets:`` and
    ``test_datasets:`` entry), each with the closest known key."""
    known = known if known is not None else known_keys()

    def named(key: str, among: set[str], where: str = "") -> str:
        near = difflib.get_close_matches(key, sorted(among), n=1, cutoff=0.6)
        return f"{where}{key!r}" + (f" (did you mean {near[0]!r}?)" if near else "")

    out = [named(k, known) for k in sorted(k for k in cfg if k not in known and k != "axolotl_config_path")]
    entries = [(f"{section}[{i}]: ", e) for section in ("datasets", "test_datasets")
               for i, e in enumerate(cfg.get(section) or []) if isinstance(e, dict)]
    if entries:
        among = dataset_keys()
        out += [named(k, among, where) for where, e in entries for k in sorted(e) if k not in among]
    return out


def multi_cpu() -> None:
    """Make the Trainer's accelerator a multi-process CPU one (accelerate's ``MULTI_CPU``: DDP over gloo).

    accelerate makes ``MULTI_CPU`` only for a ``PartialState(cpu=True)`` (``state.py``, ``_prepare_backend``); any
    other state under torchrun on a machine without an accelerator is ``DistributedType.NO``: no DDP wrapper, no
    gradient averaging, each rank training alone. transformers' ``TrainingArguments._setup_devices`` makes the
    right one (``use_cpu``), but Axolotl's trainer throws it away before building its ``Accelerator``
    (``AxolotlTrainer.create_accelerator_and_postprocess``, ``core/trainers/base.py`` line 679:
    ``AcceleratorState._reset_state(reset_partial_state=True)``), and ``Accelerator()`` then makes a fresh state
    with ``cpu=False`` unless ``ACCELERATE_USE_CPU`` is set (``AcceleratorState.__init__``, ``state.py`` line
    916). So a ``PartialState(cpu=True)`` made by a plugin hook is reset too; the variable is what survives."""
    os.environ["ACCELERATE_USE_CPU"] = "true"


def save_in_process() -> None:
    """Make ``datasets.Dataset.save_to_disk(num_proc=1)`` write in this process, as ``num_proc=None`` does.

    Axolotl saves its prepared data with ``num_proc=min(max(1, rows // 256), dataset_num_proc)``, at least 1, and
    datasets 4.x (``arrow_dataset.py``, ``save_to_disk``) starts a pool of freshly *spawned* interpreters for any
    ``num_proc >= 1``: one new Python importing datasets and torch to write a file of a few kilobytes, about 5 s of
    every CPU job (10 s with held-out data). The files written are the same."""
    import functools

    from datasets import Dataset

    save = Dataset.save_to_disk
    if getattr(save, "anytune_in_process", False):
        return

    @functools.wraps(save)
    def save_to_disk(self, dataset_path, *args, num_proc=None, **kwargs):
        return save(self, dataset_path, *args, num_proc=None if num_proc == 1 else num_proc, **kwargs)

    save_to_disk.anytune_in_process = True
    Dataset.save_to_disk = save_to_disk


class AnytunePlugin(BasePlugin):
    """metrics.jsonl, checkpoints, artefacts and the outcome file of an anytune run, through Axolotl's hooks."""

    def __init__(self):
        super().__init__()
        self.settings = runproto.read_json(SETTINGS) if os.path.exists(SETTINGS) else {}
        self.outcome = runproto.Outcome(DISTS)
        self.out = self.outcome.__enter__()
        self.trainer = None
        self.stop = None
        self.started = None
        self.trained = False

    def register(self, cfg: dict):
        """Refuse keys Axolotl does not know (it would ignore them): before any data or model loads. Save the
        prepared data in this process (:func:`save_in_process`). Several processes on CPU: DDP over gloo
        (:func:`multi_cpu`)."""
        save_in_process()
        if self.settings.get("use_cpu") and runproto.processes() > 1:
            multi_cpu()
        problems = unknown_keys(cfg)
        if problems:
            raise ValueError(f"{cfg.get('axolotl_config_path', 'the config')}: Axolotl does not know "
                             f"{', '.join(problems)} and would silently ignore "
                             f"{'it' if len(problems) == 1 else 'them'}")

    def load_datasets(self, cfg, preprocess=False):
        """The first hook after Axolotl normalised the config (``do_train``); loads nothing (returns None, so Axolotl
        loads the data itself). Several processes on CPU: put each rank's model on the CPU (:func:`cpu_device_map`)."""
        if self.settings.get("use_cpu") and runproto.processes() > 1:
            cfg.device_map = cpu_device_map(cfg.device_map)
        return None

    def get_training_args(self, cfg):
        """``TrainingArguments`` Axolotl's YAML cannot set: the rows are in the job's order (read sequentially by the
        preference trainers too, whose sampler ignores ``curriculum_sampling``), the warm-up is the job's
        (Axolotl turns 1 step into 2), a CPU job says so (transformers refuses bf16 on CPU otherwise), the
        preference trainers keep the job's dropout, and with several processes the loss is averaged over the loss
        tokens of every rank (transformers' default ``average_tokens_across_devices``, which Axolotl turns off in
        ``core/builders/base.py`` line 678: each rank's loss would be its own token mean, and the gradient the mean
        of those means), as on one process."""
        args = {}
        if self.settings.get("order"):
            args["train_sampling_strategy"] = "sequential"
        if self.settings.get("warmup_steps") is not None:
            args["warmup_steps"] = self.settings["warmup_steps"]
        if self.settings.get("use_cpu"):
            args["use_cpu"] = True
        if runproto.processes() > 1:
            args["average_tokens_across_devices"] = True
        if self.settings.get("method") in ("dpo", "orpo"):
            args["disable_dropout"] = False  # TRL's preference configs zero every dropout, peft.dropout included

        return args

    def get_collator_cls_and_kwargs(self, cfg, is_eval=False):
        """Packed training rows (``settings["packed"]``): Axolotl's own collator for tokenised rows
        (``DataCollatorForSeq2Seq``, as unpacked), without the attention mask (:func:`packed_collator`)."""
        if is_eval or not self.settings.get("packed"):
            return None
        return packed_collator(), {}

    def add_callbacks_pre_trainer(self, cfg, model):
        """A reseeding callback, the metrics callback (``metrics.jsonl`` rows) and the checkpoint/Ctrl-C callback."""
        from transformers import TrainerCallback, set_seed

        class Reseed(TrainerCallback):
            """Seed every generator with ``train.seed`` as training begins, so the dropout masks do not depend on
            how much Axolotl's set-up drew from them (a resumed run restores the checkpoint's generator states
            after this)."""

            def on_train_begin(self, args, state, control, **kwargs):
                set_seed(args.seed)

        writer = runproto.MetricsWriter()
        self.stop = hfglue.checkpoints_callback()
        return [Reseed(), hfglue.metrics_callback(writer, self.settings.get("order"), self.settings.get("rows")),
                self.stop]

    def pre_model_load(self, cfg):
        """Freeze what the process holds so far (Axolotl, torch, transformers and their modules: about a million
        objects): Axolotl's model loader calls ``gc.collect()`` three times, 0.6 s each on a CPU when it rescans
        them all. Frozen objects are never scanned or collected (what the imports left unreachable stays: a few
        megabytes); what the model, the data and training make later is collected as usual."""
        import gc

        gc.freeze()

    def pre_lora_load(self, cfg, model):
        """Seed the generators with ``train.seed`` right before the adapter's weights are initialised: Axolotl's
        set-up draws from them a varying number of times, so two runs of one job started from different LoRA
        weights."""
        from transformers import set_seed

        set_seed(cfg.seed)

    def post_trainer_create(self, cfg, trainer):
        """Keep the trainer; average the loss over the step's loss tokens (:func:`accepts_loss_kwargs`), and with
        several processes the held-out loss too (:func:`eval_step_over_ranks`); count its trainable parameters;
        start the clock."""
        self.trainer = trainer
        if self.settings.get("method") == "sft" and getattr(trainer, "model_accepts_loss_kwargs", True) is False:
            trainer.model_accepts_loss_kwargs = accepts_loss_kwargs(trainer)
        if self.settings.get("method") == "sft" and runproto.processes() > 1:
            trainer.prediction_step = eval_step_over_ranks(trainer)
        self.out["trainable_parameters"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        self.started = time.time()

    def post_train(self, cfg, model):
        """After ``trainer.train()`` (Axolotl calls it again after saving: only the first call counts): the
        training's own mean loss, one evaluation at the end when there is eval data."""
        if self.trained or self.trainer is None:
            return
        self.trained = True
        if self.stop is not None and self.stop.interrupted:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the save that follows
        self.out["train_seconds"] = round(time.time() - (self.started or time.time()), 3)
        state = self.trainer.state
        final = self.out["final"] = {}
        for row in reversed(state.log_history):
            if "train_loss" in row:
                final["train_loss"] = row["train_loss"]
                break
        if self.trainer.eval_dataset is not None and not (self.stop and self.stop.interrupted):
            metrics = self.trainer.evaluate()
            if "eval_loss" in metrics:
                final["eval_loss"] = metrics["eval_loss"]

    def post_train_unload(self, cfg):
        """After Axolotl saved the weights into ``output_dir``: move them into anytune's artefact layout, write the
        outcome file, and exit 130 when training was interrupted."""
        interrupted = bool(self.stop is not None and self.stop.interrupted)
        if interrupted and self.trainer is not None:
            self.out["interrupted_at_step"] = self.trainer.state.global_step
        self.out["artifacts"] = collect(cfg.output_dir, self.settings)
        if interrupted:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                self.outcome.__exit__(*sys.exc_info())
            sys.exit(runproto.INTERRUPTED)
        self.outcome.__exit__(None, None, None)


def cpu_device_map(device_map):
    """The device map of a rank on CPU. Axolotl's ``normalize_config`` (``utils/config/__init__.py``, line 230) sets
    ``device_map = {"": LOCAL_RANK}`` whenever ``WORLD_SIZE`` is above 1, overwriting the ``{"": "cpu"}`` its
    ``choose_device`` chose (line 154): transformers reads an integer as an accelerator's index and stops ("Cannot
    access accelerator device when none is available"). An integer becomes ``"cpu"``; anything else stays."""
    if isinstance(device_map, dict) and any(isinstance(v, int) for v in device_map.values()):
        return {k: "cpu" if isinstance(v, int) else v for k, v in device_map.items()}
    return device_map


def packed_collator():
    """Axolotl's ``DataCollatorForSeq2Seq`` for packed rows: each row is a pack of examples whose ``position_ids``
    restart at 0; the collator is given the rows without their ``attention_mask`` (it then returns none), so
    transformers builds a block-diagonal causal mask from the position ids (``masking_utils``,
    ``find_packed_sequence_indices``): no token attends to another example. It pads labels with -100 and position
    ids with a fresh ``0, 1, ...`` run (the padding is an example of its own, with no loss)."""
    from axolotl.utils.collators import DataCollatorForSeq2Seq

    class PackedCollator(DataCollatorForSeq2Seq):
        def __call__(self, features, return_tensors=None):
            return super().__call__([{k: v for k, v in f.items() if k != "attention_mask"} for f in features],
                                    return_tensors)

    return PackedCollator


def accepts_loss_kwargs(trainer) -> bool:
    """Whether the model takes ``num_items_in_batch`` (its forward's ``**kwargs`` reach its loss), as transformers'
    Trainer decides it. Axolotl's trainer says no for any model whose forward does not name the argument (Llama
    among them), so the loss of a step with gradient accumulation became the mean of its micro-batches' means
    instead of the mean over the step's loss tokens (the logged loss and the gradient both)."""
    import inspect

    model = trainer.accelerator.unwrap_model(trainer.model)
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(model, "accepts_loss_kwargs"):
        return bool(model.accepts_loss_kwargs)
    params = inspect.signature(model.forward).parameters.values()
    return any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)


def eval_step_over_ranks(trainer):
    """The Trainer's ``prediction_step`` made to return, on every rank, the loss of the step's rows of all ranks (the
    sum of their token losses over all their loss tokens), without the rows accelerate repeats to even out the last
    batch: the held-out loss one process logs at ``batch_size × processes``.

    transformers (5.16, ``Trainer.compute_loss`` and ``_get_num_items_in_batch``) gives each rank, with
    ``average_tokens_across_devices``, its own token-loss sum divided by the loss tokens of all ranks, times the
    number of ranks (right for the gradient, which DDP averages); the evaluation loop then averages those per-rank
    values over the rows ``gather_for_metrics`` keeps, and at the end of an uneven held-out set it keeps only the
    first ``remainder`` rows (rank 0's batch, part of rank 1's): the logged ``eval_loss`` was off by 0.03 on 75
    held-out rows. Here the last batch's repeated rows carry no loss token (labels -100), and the ranks' values are
    summed and divided by the number of ranks, so every rank holds the step's token mean."""
    import torch

    step, acc = trainer.prediction_step, trainer.accelerator

    def prediction_step(model, inputs, prediction_loss_only, ignore_keys=None):
        state, labels = acc.gradient_state, inputs.get("labels")
        if labels is not None and state.end_of_dataloader and state.remainder > 0:
            real = max(0, min(len(labels), state.remainder - acc.process_index * len(labels)))
            labels = labels.clone()
            labels[real:] = -100
            inputs = {**inputs, "labels": labels}
        loss, logits, out_labels = step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        if loss is not None:
            loss = loss.detach().clone()
            torch.distributed.all_reduce(loss)
            loss = loss / acc.num_processes
        return loss, logits, out_labels

    return prediction_step


def collect(output_dir: str, settings: dict) -> dict:
    """Move what Axolotl saved into ``output_dir`` (all but the ``checkpoint-*`` folders) to ``artifacts/adapter``
    (PEFT) or ``artifacts/model``; delete it when the job keeps no artefacts. The outcome's ``artifacts``. Rank 0
    alone (Axolotl's main process saved them; another rank could find the folder half written)."""
    if runproto.rank() != 0 or not os.path.isdir(output_dir):
        return {}
    kind = "adapter" if settings.get("adapter", True) else "model"
    dest = os.path.join(runproto.ARTIFACTS, kind)
    log = os.path.join(output_dir, "debug.log")  # Axolotl's own log: beside the step's logs, not in the weights
    if os.path.isfile(log):
        os.makedirs(runproto.LOGS, exist_ok=True)
        shutil.move(log, os.path.join(runproto.LOGS, "axolotl.debug.log"))
    saved = [n for n in os.listdir(output_dir) if not n.startswith("checkpoint-")]
    keep = settings.get("save", True) and any(n.endswith((".safetensors", ".bin")) for n in saved)
    if keep:
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest)
    for name in saved:
        src = os.path.join(output_dir, name)
        if keep:
            shutil.move(src, os.path.join(dest, name))
        elif os.path.isdir(src):
            shutil.rmtree(src)
        else:
            os.remove(src)
    if not os.listdir(output_dir):
        os.rmdir(output_dir)
    return {kind: runproto.local_artifact(dest)} if keep else {}


if __name__ == "__main__":  # python plan/anytune_axolotl.py plan/axolotl.yaml: the unknown keys of a config
    import yaml

    with open(sys.argv[1], encoding="utf-8") as f:
        found = unknown_keys(yaml.safe_load(f) or {})
    print(json.dumps(found))
    sys.exit(1 if found else 0)
