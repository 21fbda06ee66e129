"""anytune's components for torchtune recipes, named by ``_component_`` in ``plan/torchtune.yaml``.

Copied into ``plan/anytune_torchtune.py`` beside ``runproto.py``, ``lossmask.py`` and ``chatrender.py``.
``tune run`` puts the run directory on ``sys.path``, so the recipe config names them
``plan.anytune_torchtune.X``. Imports only torch, torchtune's own dependencies (tokenizers, jinja2,
safetensors), the standard library and those three copies, never anytune: an ejected plan runs where
anytune is not installed.

- ``ChatTemplateTokenizer``: the model's ``tokenizer.json`` plus the chat template of record,
  rendered as transformers renders it (``chatrender``, the core's own renderer).
- ``sft_dataset`` / ``preference_dataset``: the run's normalised records, tokenised with the
  loss mask every anytune engine uses (``lossmask.loss_spans`` + ``mask_from_offsets``);
  ``packed_sft_dataset``: the same SFT examples packed by torchtune's ``PackedDataset``.
- ``AdamW`` / ``SGD``: torch's optimisers that record the trainable-parameter count and
  can clip gradients (for recipes that do not).
- ``lr_schedule``: Hugging Face's schedules (linear, cosine, constant, constant_with_warmup).
- ``MetricLogger``: writes ``metrics.jsonl`` rows; when the recipe closes it, moves the
  checkpoint into ``artifacts/`` in Hugging Face / PEFT layout and writes the outcome file
  (``runproto.outcome_path()``). It records nothing on a crash: the exit code says the run
  failed, and the core reads the error from the recipe's stderr.
"""
from __future__ import annotations

import glob
import json
import math
import os
import random
import shutil
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chatrender  # noqa: E402
import lossmask  # noqa: E402
import runproto  # noqa: E402

import torch  # noqa: E402

IGNORE = -100
CHECKPOINT_STATE = "anytune_state.pt"
"""A torchtune checkpoint's file (in ``artifacts/checkpoints/checkpoint-<step>/``)."""
#: State shared by the components of one run (one process, one module object).
STATE: dict[str, Any] = {"tokens": 0, "trainable": None, "grad_norm": None, "logger": None}
#: Tokenizer files copied next to a saved adapter or model.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json")
#: torchtune module name -> Hugging Face module name (PEFT target_modules).
HF_MODULES = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "output_proj": "o_proj",
              "w1": "gate_proj", "w2": "down_proj", "w3": "up_proj", "output": "lm_head"}



def _distributed_on_cpu() -> None:
    """Let torchtune 0.6.1's distributed recipes run on CPU (gloo), as CI runs them; CUDA is left as it is.

    Two calls in them assume a GPU: on rank 0, after the model is sharded, every ``*_distributed`` recipe calls
    ``training.get_memory_stats(device)`` whether or not ``log_peak_memory_stats`` is set
    (``recipes/full_finetune_distributed.py`` line 628, ``lora_finetune_distributed.py`` 544,
    ``lora_dpo_distributed.py`` 447), which raises ``ValueError`` for a CPU device
    (``torchtune/training/memory.py`` line 264); and before training each rank calls
    ``training.cleanup_before_training()``, which calls ``torch.cpu.empty_cache()`` (``memory.py`` line 51),
    which torch does not have. On CPU the first reports zeros and the second only collects garbage.
    """
    import gc

    from torchtune import training

    stats, cleanup = training.get_memory_stats, training.cleanup_before_training

    def get_memory_stats(device, reset_stats: bool = True) -> dict:
        if getattr(device, "type", device) == "cpu":
            return {"peak_memory_active": 0.0, "peak_memory_alloc": 0.0, "peak_memory_reserved": 0.0}
        return stats(device, reset_stats)

    def cleanup_before_training() -> None:
        if torch.cuda.is_available():
            return cleanup()
        gc.collect()

    training.get_memory_stats, training.cleanup_before_training = get_memory_stats, cleanup_before_training


if runproto.processes() > 1:
    _distributed_on_cpu()

# -- tokenizer ----------------------------------------------------------------------------------------


class ChatTemplateTokenizer:
    """The model's fast tokenizer (``tokenizer.json``) with the chat template of record.

    :param path: Hugging Face model/tokenizer directory.
    :param chat_template: file holding the template of record (``data/chat_template.jinja``); None for text data.
    :param max_seq_len: examples are cut to this many tokens (the first ones, no EOS put in).
    """

    def __init__(self, path: str, chat_template: str | None = None, max_seq_len: int | None = None):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.special = chatrender.special_tokens(path)
        self.template = None
        if chat_template and os.path.exists(chat_template):
            with open(chat_template, encoding="utf-8") as f:
                self.template = chatrender.environment().from_string(f.read())
        self.max_seq_len = max_seq_len
        self.eos = self.special.get("eos_token", "")
        self.eos_id = self.tokenizer.token_to_id(self.eos) if self.eos else None
        pad = self.special.get("pad_token")
        pad_id = self.tokenizer.token_to_id(pad) if pad else None
        self.pad_id = pad_id if pad_id is not None else (self.eos_id if self.eos_id is not None else 0)
        bos = self.special.get("bos_token")
        self.bos_id = self.tokenizer.token_to_id(bos) if bos else None

    def render(self, messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None) -> str:
        """The conversation as text, exactly as ``apply_chat_template(..., tools=tools, tokenize=False)`` renders it."""
        if self.template is None:
            raise ValueError("this data needs a chat template and none was given (tokenizer.chat_template)")
        return chatrender.render(self.template, messages, add_generation_prompt, self.special, tools)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text`` (torchtune's BaseTokenizer protocol)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if add_bos and self.bos_id is not None else []) + ids + \
            ([self.eos_id] if add_eos and self.eos_id is not None else [])

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``."""
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def masked(self, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
        """Token ids of ``text`` and their loss mask (1 = the token's first character is in a span), truncated."""
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        mask = lossmask.mask_from_offsets(enc.offsets, spans)
        ids = list(enc.ids)
        if self.max_seq_len:
            ids, mask = ids[:self.max_seq_len], mask[:self.max_seq_len]
        return ids, mask

    def example(self, kind: str, record: dict, completion_only: bool = True) -> tuple[list[int], list[int]]:
        """Tokens and loss mask of one SFT record (messages, prompt_completion or text)."""
        text, spans = lossmask.loss_spans(kind, record, self.render, completion_only, eos=self.eos)
        return self.masked(text, spans)

    def preference(self, record: dict) -> dict[str, list[int]]:
        """Chosen and rejected tokens and labels of one preference record (loss on the answer turns only)."""
        out = {}
        start = len(self.render(record["prompt"], True))
        for side in ("chosen", "rejected"):
            text = self.render(record["prompt"] + record[side], False)
            ids, mask = self.masked(text, [(start, len(text))])
            out[f"{side}_input_ids"] = ids
            out[f"{side}_labels"] = [t if m else IGNORE for t, m in zip(ids, mask)]
        return out


# -- datasets ----------------------------------------------------------------------------------------


def _order(n: int, steps: int, batch_size: int, grad_accum: int, seed: int, shuffle: bool, start_step: int,
           processes: int = 1) -> list[int]:
    """The job's example order (``runproto.example_order``, the one every engine trains on), from ``start_step``.

    With several processes each micro-step takes one batch per process in turn (``batch_size × processes``
    examples, as TRL's Trainer splits them): process ``r`` trains the ``r``-th batch of each micro-step's
    examples. torchtune's distributed recipes read the data set through a ``DistributedSampler`` (no shuffle),
    which gives process ``r`` the positions ``r, r + processes, ...``, so each micro-step's examples are laid
    out interleaved for it.
    """
    big = batch_size * processes
    order = runproto.example_order(n, steps, big, grad_accum, seed, shuffle)[start_step * big * grad_accum:]
    if processes == 1:
        return order
    _check_world(processes)
    out = [0] * len(order)
    for k in range(0, len(order), big):  # one micro-step: process r's batch is order[k + r*B : k + (r+1)*B]
        for r in range(processes):
            for j in range(batch_size):
                out[k + j * processes + r] = order[k + r * batch_size + j]
    return out


def _check_world(processes: int) -> None:
    """The plan's process count is the launcher's (``tune run --nproc_per_node``; ``$WORLD_SIZE``)."""
    world = runproto.processes()
    if world != processes:
        raise RuntimeError(f"this plan was made for {processes} processes (train.devices × train.nodes) and "
                           f"runs in {world}: run it with its own command (plan/run.sh)")


def _stop_if_asked() -> None:
    """After Ctrl-C: once the step under way is saved and logged (the next batch is being drawn), record the
    outcome and stop the recipe with ``KeyboardInterrupt`` (the process exits 130)."""
    if STATE.get("stopped_at") is None:
        return
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the core's own SIGINT must not cut the outcome
    logger = STATE["logger"]
    if logger is not None:
        outcome = logger.outcome({})
        outcome["interrupted_at_step"] = STATE["stopped_at"]
        runproto.atomic_write_json(runproto.outcome_path(), outcome)
    raise KeyboardInterrupt


def _resume_rng() -> None:
    """Restore the random state a resumed checkpoint saved, once, as the first batch is drawn (after the data
    loader's own draw of its base seed, as in the run that saved it)."""
    rng = STATE.pop("rng", None)
    if rng is not None:
        torch.set_rng_state(rng["cpu"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


class _Records(torch.utils.data.Dataset):
    """Pre-tokenised examples served in the job's example order (``order``: indices into ``examples``).
    With several processes each counts the tokens of every process's examples (its own and those beside them
    in the interleaved order), so the ``tokens`` column is the job's, as with one process."""

    def __init__(self, examples: list[dict], order: list[int], processes: int = 1):
        self.examples, self.order, self.processes = examples, order, processes

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict:
        if STATE["logger"] is not None and not STATE.get("started"):
            STATE["started"] = True
            STATE["logger"].writer.restart()  # training begins with the first batch
            _resume_rng()
        _stop_if_asked()
        first = i - i % self.processes
        for n in self.order[first:first + self.processes]:
            STATE["tokens"] += sum(len(v) for k, v in self.examples[n].items()
                                   if k in ("tokens", "chosen_input_ids", "rejected_input_ids"))
        return self.examples[self.order[i]]


def sft_dataset(tokenizer: ChatTemplateTokenizer, source: str, kind: str, completion_only_loss: bool = True,
                steps: int = 1, batch_size: int = 1, grad_accum: int = 1, seed: int = 0, shuffle: bool = True,
                start_step: int = 0, processes: int = 1) -> torch.utils.data.Dataset:
    """SFT examples (``tokens``, ``labels``) from a normalised jsonl file of the run directory, in the job's
    example order (the recipe runs one epoch of it).

    :param kind: canonical record kind: messages, prompt_completion or text.
    :param completion_only_loss: loss on assistant turns / completions only (else on every token).
    :param steps: optimiser steps of ``grad_accum`` micro-batches of ``batch_size`` examples to serve.
    :param seed: seed of each pass's shuffle.
    :param shuffle: false: every pass in file order (``train.shuffle=false``).
    :param start_step: steps already trained (a resumed run): their examples are skipped.
    :param processes: processes training together (a distributed recipe); ``batch_size`` is each one's.
    """
    examples = []
    for rec in runproto.read_jsonl(source):
        ids, mask = tokenizer.example(kind, rec, completion_only_loss)
        examples.append({"tokens": ids, "labels": [t if m else IGNORE for t, m in zip(ids, mask)]})
    order = _order(len(examples), steps, batch_size, grad_accum, seed, shuffle, start_step, processes)
    return _Records(examples, order, processes)


class _Packs(torch.utils.data.Dataset):
    """Packs of torchtune's ``PackedDataset`` in the job's order over the packs (``order``: indices)."""

    def __init__(self, packs: list[dict], order: list[int]):
        self.packs, self.order = packs, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict:
        if STATE["logger"] is not None and not STATE.get("started"):
            STATE["started"] = True
            STATE["logger"].writer.restart()
            _resume_rng()
        _stop_if_asked()
        pack = self.packs[self.order[i]]
        STATE["tokens"] += int(pack["real_tokens"])
        return {k: v for k, v in pack.items() if k != "real_tokens"}


def packed_sft_dataset(tokenizer: ChatTemplateTokenizer, source: str, kind: str, completion_only_loss: bool = True,
                       seed: int = 0, packed: bool = True, max_steps: int = -1, epochs: float = 1.0,
                       batch_size: int = 1, grad_accum: int = 1, shuffle: bool = True,
                       start_step: int = 0) -> torch.utils.data.Dataset:
    """SFT examples packed by torchtune's ``PackedDataset`` into sequences of ``tokenizer.max_seq_len`` tokens.

    The records are shuffled once (``seed``) and packed in that order, greedily, an example never split
    across packs; the recipe's ``padded_collate_packed`` turns each pack's ``seq_lens`` into a
    document mask and ``input_pos`` restarts at 0 for every example. Each example's first label is
    ignored, so after the recipe's one-token label shift no token predicts the next example's first
    token: the (context, target) pairs that carry loss are those of the unpacked data.

    :param packed: tells the recipe to collate with ``padded_collate_packed`` (read from the config).
    :param max_steps: optimiser steps to serve; <= 0: ``ceil(epochs * ceil(ceil(packs / batch) / accum))``
        as Hugging Face counts them over the packed data.
    :param start_step: steps already trained (a resumed run): their packs are skipped.
    """
    from torchtune.datasets import PackedDataset

    examples = []
    for rec in runproto.read_jsonl(source):
        ids, mask = tokenizer.example(kind, rec, completion_only_loss)
        labels = [t if m else IGNORE for t, m in zip(ids, mask)]
        if labels:
            labels[0] = IGNORE  # never a target across a pack's example boundary
        examples.append({"tokens": ids, "labels": labels})
    order = runproto.example_order(len(examples), 1, len(examples), 1, seed, shuffle)  # one pass
    packed_ds = PackedDataset([examples[i] for i in order], max_seq_len=int(tokenizer.max_seq_len),
                              padding_idx=tokenizer.pad_id, split_across_pack=False)
    ordered, j, packs = [len(examples[i]["tokens"]) for i in order], 0, []
    for pack in packed_ds.packs:  # real tokens: the examples' seq_lens, not the trailing padding entry
        real = 0
        for n in pack["seq_lens"].tolist():
            if j < len(ordered) and ordered[j] == n:
                real, j = real + n, j + 1
            else:
                break
        packs.append({**pack, "real_tokens": real})
    if max_steps <= 0:
        max_steps = max(1, math.ceil(epochs * math.ceil(math.ceil(len(packs) / batch_size) / grad_accum)))
    STATE["packs"] = len(packs)
    STATE["max_steps"] = max_steps
    return _Packs(packs, _order(len(packs), max_steps, batch_size, grad_accum, seed, shuffle, start_step))


def preference_dataset(tokenizer: ChatTemplateTokenizer, source: str, steps: int = 1, batch_size: int = 1,
                       grad_accum: int = 1, seed: int = 0, shuffle: bool = True,
                       start_step: int = 0, processes: int = 1) -> torch.utils.data.Dataset:
    """DPO examples (``chosen_input_ids``, ``chosen_labels``, ``rejected_*``) from normalised preference records."""
    examples = [tokenizer.preference(rec) for rec in runproto.read_jsonl(source)]
    order = _order(len(examples), steps, batch_size, grad_accum, seed, shuffle, start_step, processes)
    return _Records(examples, order, processes)


# -- optimisers and schedules ------------------------------------------------------------------------


def _count_trainable(params) -> list:
    params = list(params)
    flat = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    STATE["trainable"] = sum(p.numel() for p in flat if p.requires_grad)
    return params


class _Clipping:
    """Mixin over a torch optimiser: record the trainable-parameter count; clip the gradient norm before each step
    if ``max_grad_norm`` is set (for recipes without ``clip_grad_norm``)."""

    def __init__(self, params, max_grad_norm: float | None = None, **kwargs):
        super().__init__(_count_trainable(params), **kwargs)
        self.max_grad_norm = max_grad_norm

    def step(self, closure=None):
        if self.max_grad_norm is not None:
            grads = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
            STATE["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(grads, float(self.max_grad_norm)))
        return super().step(closure)


class _Checkpointing:
    """Mixin over a torch optimiser: resumable checkpoints, which torchtune 0.6's recipes write only at the end
    of an epoch (anytune's runs are one epoch), and a clean stop on Ctrl-C.

    The optimiser sees every optimiser step, the trainable parameters and its own state, so it saves, after
    the step, ``artifacts/checkpoints/checkpoint-<step>/anytune_state.pt``: the trainable parameters in order,
    the optimiser state, the random state and the token count. A resumed run loads them here (the recipe
    builds the optimiser after the model); the data set skips the trained steps' examples and the schedule
    starts where it was.

    :param save_steps: save every N optimiser steps (0: only on Ctrl-C).
    :param resume: checkpoint folder to load (a resumed run), or None.
    :param start_step: steps the loaded checkpoint had trained (0 without one).
    """

    def __init__(self, params, save_steps: int = 0, resume: str | None = None, start_step: int = 0, **kwargs):
        import signal

        super().__init__(params, **kwargs)
        self.save_steps, self.step_count = int(save_steps or 0), int(start_step)
        self.trainable = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        if resume:
            self._load(resume)
        STATE["stop"] = False
        if runproto.processes() == 1:  # several processes: Ctrl-C stops them unsaved
            signal.signal(signal.SIGINT, lambda signum, frame: STATE.update(stop=True))

    def _load(self, path: str) -> None:
        state = torch.load(os.path.join(path, CHECKPOINT_STATE), map_location="cpu", weights_only=True)
        lrs = [g["lr"] for g in self.param_groups]
        with torch.no_grad():
            for p, saved in zip(self.trainable, state["params"], strict=True):
                p.copy_(saved)
        self.load_state_dict(state["optimizer"])
        for g, lr in zip(self.param_groups, lrs):  # the schedule sets the rate from the configured peak
            g["lr"] = lr
            g.pop("initial_lr", None)
        STATE["tokens"], STATE["rng"] = int(state["tokens"]), state["rng"]

    def save(self) -> str:
        """Write this step's checkpoint (atomically: a folder renamed into place once complete)."""
        final = os.path.join(runproto.CHECKPOINTS, f"checkpoint-{self.step_count}")
        tmp = final + ".partial"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available()
               else None}
        torch.save({"step": self.step_count, "params": [p.detach().cpu() for p in self.trainable],
                    "optimizer": self.state_dict(), "rng": rng, "tokens": STATE["tokens"]},
                   os.path.join(tmp, CHECKPOINT_STATE))
        runproto.mark_complete(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        return final

    def step(self, closure=None):
        out = super().step(closure)
        self.step_count += 1
        stop = STATE.get("stop")
        if stop or (self.save_steps and self.step_count % self.save_steps == 0):
            self.save()
        if stop:  # the recipe logs this step; the next batch drawn then stops the run (_stop_if_asked)
            STATE["stopped_at"] = self.step_count
        return out


class AdamW(_Checkpointing, _Clipping, torch.optim.AdamW):
    """``torch.optim.AdamW``; ``max_grad_norm`` clips gradients first; checkpoints and resume."""


class SGD(_Checkpointing, _Clipping, torch.optim.SGD):
    """``torch.optim.SGD``; ``max_grad_norm`` clips gradients first; checkpoints and resume."""


def lr_schedule(optimizer, name: str, num_training_steps: int, warmup_ratio: float = 0.0, last_epoch: int = -1,
                start_step: int = 0):
    """Hugging Face's learning-rate schedules (``transformers.get_scheduler``) as a LambdaLR.

    :param name: linear, cosine, constant or constant_with_warmup.
    :param num_training_steps: the steps the recipe will run (after ``start_step`` in a resumed run).
    :param warmup_ratio: warm-up steps = ceil(ratio * total steps), rising linearly from 0
        (``constant`` ignores it, as transformers does).
    :param start_step: steps trained before (a resumed run): the schedule starts there.
    """
    import warnings

    total = num_training_steps + start_step
    warmup = math.ceil(total * warmup_ratio) if warmup_ratio else 0

    def factor(step: int) -> float:
        if name == "constant":  # as transformers: no warm-up
            return 1.0
        if step < warmup:
            return step / max(1, warmup)
        if name == "constant_with_warmup":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if name == "linear":
            return max(0.0, (total - step) / max(1, total - warmup))
        if name == "cosine":
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        raise ValueError(f"unknown schedule {name!r}")

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch)
    with warnings.catch_warnings():  # "step() before optimizer.step()": these steps were trained before
        warnings.simplefilter("ignore")
        for _ in range(start_step):
            schedule.step()
    return schedule


# -- metrics, artefacts, outcome ---------------------------------------------------------------------


def _scalar(value):
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    return float(value)


class MetricLogger:
    """torchtune metric logger writing anytune's ``metrics.jsonl``; on close, artefacts and the outcome file.

    :param filename: metrics file, relative to the run directory.
    :param max_steps: optimiser steps planned.
    :param train_rows: training records (for the ``epoch`` column).
    :param examples_per_step: batch_size * gradient_accumulation_steps.
    :param artifacts: ``adapter`` (PEFT layout into artifacts/adapter), ``model`` (artifacts/model) or ``none``.
    :param start_step: steps trained before (a resumed run): the recipe counts from 0, the rows from here.
    """

    def __init__(self, filename: str = runproto.METRICS_FILE, max_steps: int | None = None,
                 train_rows: int | None = None, examples_per_step: int = 1, artifacts: str = "adapter",
                 start_step: int = 0, **_):
        self.start_step = int(start_step)
        self.writer = runproto.MetricsWriter(filename)
        self.max_steps, self.train_rows, self.examples_per_step = max_steps, train_rows, examples_per_step
        self.artifacts = artifacts
        self.config = None
        self.rows: list[dict] = []
        self.started = time.time()
        self.closed = False
        STATE["logger"] = self

    def log_config(self, config) -> None:
        """Keep the resolved recipe config (the artefact step reads the checkpointer and model from it)."""
        self.config = config

    def log(self, name: str, data, step: int) -> None:
        """One scalar."""
        self.log_dict({name: data}, step)

    def log_dict(self, payload: dict, step: int) -> None:
        """One recipe log row -> one metrics.jsonl row in anytune's schema."""
        step += self.start_step
        loss = _scalar(payload.get("loss"))
        epoch = None
        rows = STATE.get("packs") or self.train_rows  # with packing an epoch is a pass over the packs
        if rows:
            epoch = round(step * self.examples_per_step / rows, 4)
        grad_norm = _scalar(payload.get("grad_norm", STATE["grad_norm"]))
        max_steps = self.max_steps if self.max_steps else STATE.get("max_steps")
        row = self.writer.write(step=step, max_steps=max_steps, epoch=epoch, loss=loss,
                                learning_rate=_scalar(payload.get("lr")), grad_norm=grad_norm,
                                tokens=STATE["tokens"])
        self.rows.append(row)

    def close(self) -> None:
        """The recipe finished: move its checkpoint into artifacts/ and write the outcome file.

        Anything raised here propagates: the recipe's process fails, and its exit code says so.
        """
        if self.closed:
            return
        self.closed = True
        artifacts = finish(self.config, self.artifacts)
        runproto.atomic_write_json(runproto.outcome_path(), self.outcome(artifacts))

    def outcome(self, artifacts: dict[str, dict]) -> dict[str, Any]:
        """What the run produced: final metrics, artefacts, trainable parameters, versions, hardware, time."""
        losses = [r["loss"] for r in self.rows if "loss" in r]
        final: dict[str, Any] = {"steps": self.rows[-1]["step"] if self.rows else 0}
        if self.rows:
            final.update({k: v for k, v in self.rows[-1].items() if k in runproto.METRICS})
        if losses:
            final.update(first_loss=losses[0], last_loss=losses[-1],
                         train_loss=sum(losses) / len(losses))
        return {"final": final, "artifacts": artifacts, "trainable_parameters": STATE["trainable"],
                "versions": runproto.versions("torchtune", "torch", "torchao", "torchdata", "tokenizers"),
                "hardware": runproto.hardware(), "peak_memory_mb": runproto.peak_memory_mb(),
                "train_seconds": round(time.time() - self.started, 3)}


def _last_epoch_dir(output_dir: str) -> str:
    dirs = [d for d in glob.glob(os.path.join(output_dir, "epoch_*")) if os.path.isdir(d)]
    if not dirs:
        raise FileNotFoundError(f"torchtune wrote no checkpoint under {output_dir}")
    return max(dirs, key=lambda d: int(d.rsplit("_", 1)[1]))


def _copy_tokenizer(model_dir: str, out: str, chat_template: str | None) -> None:
    """The model's tokenizer files, with the chat template of record as ``chat_template.jinja``."""
    for name in TOKENIZER_FILES:
        src = os.path.join(model_dir, name)
        if os.path.isfile(src):
            shutil.copy(src, os.path.join(out, name))
    if chat_template and os.path.isfile(chat_template):
        shutil.copy(chat_template, os.path.join(out, "chat_template.jinja"))
        config_path = os.path.join(out, "tokenizer_config.json")
        config = chatrender.read_json(config_path)
        if "chat_template" in config:  # the template of record wins
            del config["chat_template"]
            with open(config_path, "w") as f:
                json.dump(config, f, indent=2)


def peft_adapter(tune_state: dict, hf_config: dict) -> dict:
    """torchtune LoRA/DoRA weights -> PEFT's key names and Hugging Face's q/k row order.

    torchtune's own conversion leaves DoRA magnitudes of q_proj/k_proj in torchtune's
    rotary row order; they are permuted here like lora_B.
    """
    from torchtune.models.convert_weights import tune_to_peft_adapter_weights

    heads, kv_heads, dim = hf_config["num_attention_heads"], hf_config["num_key_value_heads"], hf_config["hidden_size"]
    head_dim = hf_config.get("head_dim") or dim // heads
    state = dict(tune_state)
    for key, value in state.items():
        if key.endswith("magnitude") and (".q_proj." in key or ".k_proj." in key):
            n = heads if ".q_proj." in key else kv_heads
            state[key] = value.view(n, head_dim // 2, 2).transpose(1, 2).reshape(-1)
    return tune_to_peft_adapter_weights(state, num_heads=heads, num_kv_heads=kv_heads, dim=dim, head_dim=head_dim)


def finish(cfg, artifacts: str) -> dict[str, dict]:
    """Move torchtune's last checkpoint into anytune's artefact layout; remove torchtune's folder.

    ``adapter``: artifacts/adapter with adapter_model.safetensors (PEFT keys),
    adapter_config.json (base_model_name_or_path = the base model's directory) and the
    tokenizer; never merged weights beside it. ``model``: artifacts/model with the
    Hugging Face config, safetensors shards and the tokenizer.

    :returns: the artefact written, as the outcome file lists it: ``{"adapter": {"path": "artifacts/adapter"}}``.
    """
    from safetensors.torch import save_file

    ckpt = cfg.checkpointer
    tune_dir, model_dir = ckpt.output_dir, os.path.abspath(ckpt.checkpoint_dir)
    chat_template = cfg.tokenizer.get("chat_template")
    out: dict[str, dict] = {}
    if artifacts == "adapter":
        last = _last_epoch_dir(tune_dir)
        hf_config = chatrender.read_json(os.path.join(model_dir, "config.json"))
        tune_state = torch.load(os.path.join(last, "adapter_model.pt"), map_location="cpu", weights_only=True)
        dest = os.path.join(runproto.ARTIFACTS, "adapter")
        os.makedirs(dest, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in peft_adapter(tune_state, hf_config).items()}
        save_file(tensors, os.path.join(dest, "adapter_model.safetensors"), metadata={"format": "pt"})
        m = cfg.model
        targets = list(m.lora_attn_modules) + (["w1", "w2", "w3"] if m.get("apply_lora_to_mlp") else []) + \
            (["output"] if m.get("apply_lora_to_output") else [])
        adapter_config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": model_dir,
                          "r": int(m.lora_rank), "lora_alpha": float(m.lora_alpha),
                          "lora_dropout": float(m.get("lora_dropout", 0.0)),
                          "target_modules": sorted(HF_MODULES[t] for t in targets),
                          "use_dora": bool(m.get("use_dora", False)), "bias": "none", "fan_in_fan_out": False,
                          "inference_mode": True, "modules_to_save": None}
        with open(os.path.join(dest, "adapter_config.json"), "w") as f:
            json.dump(adapter_config, f, indent=2)
        _copy_tokenizer(model_dir, dest, chat_template)
        out["adapter"] = runproto.local_artifact(f"{runproto.ARTIFACTS}/adapter")
    elif artifacts == "model":
        last = _last_epoch_dir(tune_dir)
        dest = os.path.join(runproto.ARTIFACTS, "model")
        os.makedirs(dest, exist_ok=True)
        dtype = None
        for path in glob.glob(os.path.join(last, "*.safetensors")) + glob.glob(os.path.join(last, "*.index.json")):
            shutil.move(path, os.path.join(dest, os.path.basename(path)))
        for name in ("config.json", "generation_config.json"):
            if os.path.isfile(os.path.join(model_dir, name)):
                shutil.copy(os.path.join(model_dir, name), os.path.join(dest, name))
        shards = sorted(glob.glob(os.path.join(dest, "*.safetensors")))
        if shards:
            from safetensors import safe_open

            with safe_open(shards[0], "pt") as f:
                dtype = str(f.get_slice(next(iter(f.keys()))).get_dtype()).lower()
        config_path = os.path.join(dest, "config.json")
        config = chatrender.read_json(config_path)
        if dtype and config:  # the weights' dtype, as transformers names it
            name = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}.get(dtype, config.get("dtype"))
            config["dtype"] = name
            config.pop("torch_dtype", None)
            with open(config_path, "w") as f:
                json.dump(config, f, indent=2)
        _copy_tokenizer(model_dir, dest, chat_template)
        out["model"] = runproto.local_artifact(f"{runproto.ARTIFACTS}/model")
    shutil.rmtree(tune_dir, ignore_errors=True)
    return out
