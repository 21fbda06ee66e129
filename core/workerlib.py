"""Engine-neutral helpers for workers. Standard library only.

This file is copied into every plan directory next to the engine's worker, so
an ejected plan runs where anytune is not installed. Keep it stdlib-only.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import sys
import tempfile
import time
from typing import Any, Callable, Iterable

#: The one metrics schema for all engines: one JSON object per line of metrics.jsonl.
METRICS = {
    "step": "optimiser step (1-based)",
    "max_steps": "total optimiser steps planned",
    "epoch": "fractional epoch",
    "loss": "training loss: mean over loss tokens of the step's batches",
    "learning_rate": "learning rate at this step",
    "grad_norm": "gradient norm before clipping",
    "tokens": "tokens processed so far (non-padding)",
    "tokens_per_s": "tokens processed per second since the previous row",
    "peak_memory_mb": "peak accelerator memory (CUDA) or peak process RSS (CPU), MiB",
    "eval_loss": "loss on the eval set (rows written at evaluation)",
    "elapsed_s": "seconds since training started",
}


def atomic_write_text(path: str, text: str) -> None:
    """Write text so readers see the old file or the new one, never half of one."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str, obj: Any) -> None:
    """Write JSON atomically (see ``atomic_write_text``)."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str))


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def peak_memory_mb() -> float:
    """Peak CUDA memory if torch has CUDA in use, else the process's peak RSS."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class MetricsWriter:
    """Appends schema rows to metrics.jsonl, adding elapsed time, tokens/s and peak memory."""

    def __init__(self, path: str):
        self.path = path
        self.start = time.time()
        self._last_t = self.start
        self._last_tokens = 0
        open(path, "a").close()

    def restart(self) -> None:
        """Start the clock now (call when training, not loading, begins)."""
        self.start = self._last_t = time.time()

    def write(self, **row: Any) -> dict:
        now = time.time()
        row = {k: v for k, v in row.items() if k in METRICS and v is not None}
        tokens = row.get("tokens")
        if tokens is not None and "tokens_per_s" not in row and now > self._last_t:
            row["tokens_per_s"] = round((tokens - self._last_tokens) / (now - self._last_t), 1)
            self._last_tokens, self._last_t = tokens, now
        row.setdefault("peak_memory_mb", peak_memory_mb())
        row["elapsed_s"] = round(now - self.start, 3)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        return row


def versions(*dists: str) -> dict[str, str]:
    """Installed versions of the named distributions (missing ones omitted)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for d in dists:
        try:
            out[d] = version(d)
        except PackageNotFoundError:
            pass
    return out


def hardware() -> dict[str, Any]:
    """CPU/GPU description of this machine."""
    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                            "machine": platform.machine()}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


class Recorder:
    """Context manager that records one worker run in ``result.json``, whatever happens.

    ``with rec as result:`` yields the result dict to fill; on exit the status is
    succeeded, interrupted (Ctrl-C) or failed (with the error and traceback tail), the
    hardware, peak memory and worker time are added, the file is written atomically and
    ``rec.code`` holds the process exit code (0, 130 or 1). Exceptions are recorded, not raised.
    """

    def __init__(self, engine: str, dists: tuple[str, ...], path: str = "result.json"):
        self.path, self.code, self.started = path, 1, time.time()
        self.result: dict[str, Any] = {"status": "failed", "engine": engine, "versions": versions(*dists)}

    def __enter__(self) -> dict[str, Any]:
        return self.result

    def __exit__(self, typ, exc, tb) -> bool:
        import traceback

        r = self.result
        if typ is None:
            r["status"], self.code = "succeeded", 0
        elif issubclass(typ, KeyboardInterrupt):
            r["status"], self.code = "interrupted", 130
        else:
            r["error"] = f"{typ.__name__}: {exc}"
            r["traceback"] = "".join(traceback.format_exception(typ, exc, tb))[-4000:]
            traceback.print_exception(typ, exc, tb)
        r.update(hardware=hardware(), peak_memory_mb=peak_memory_mb(),
                 worker_seconds=round(time.time() - self.started, 3))
        atomic_write_json(self.path, r)
        return True


def hf_metrics_callback(writer: MetricsWriter) -> Any:
    """A ``transformers.TrainerCallback`` writing the Trainer's log rows as schema rows
    (imports transformers: call it only from a Hugging Face worker)."""
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        """One metrics.jsonl row per training log and one per evaluation."""

        def on_train_begin(self, args, state, control, **kwargs):
            writer.restart()  # the clock starts with training, not loading

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            tokens = state.num_input_tokens_seen or logs.get("num_tokens")
            common = {"step": state.global_step, "max_steps": state.max_steps, "epoch": logs.get("epoch")}
            if "loss" in logs:
                writer.write(**common, loss=logs["loss"], learning_rate=logs.get("learning_rate"),
                             grad_norm=logs.get("grad_norm"), tokens=int(tokens) if tokens else None)
            if "eval_loss" in logs:
                writer.write(**common, eval_loss=logs["eval_loss"])

    return MetricsCallback()


def train_hf(trainer: Any, result: dict[str, Any], metrics_path: str = "metrics.jsonl") -> None:
    """Train a Hugging Face ``Trainer`` (TRL's trainers too) and fill ``result``'s final metrics."""
    result["trainable_parameters"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    loop_start = time.time()
    out = trainer.train()
    result["train_seconds"] = round(time.time() - loop_start, 3)
    final = result["final"] = {"train_loss": out.training_loss, "steps": trainer.state.global_step}
    if trainer.eval_dataset is not None:
        metrics = trainer.evaluate()
        if "eval_loss" in metrics:
            final["eval_loss"] = metrics["eval_loss"]
    losses = [r["loss"] for r in read_jsonl(metrics_path) if "loss" in r]
    if losses:
        final.update(first_loss=losses[0], last_loss=losses[-1])


def save_hf(trainer: Any, tokenizer: Any, adapter: bool) -> dict[str, str]:
    """Save a Trainer's model: the adapter to artifacts/adapter (PEFT layout) or the whole model to
    artifacts/model, tokenizer beside it; drop the trainer's output dir if it left nothing there."""
    kind = "adapter" if adapter else "model"
    out = os.path.join("artifacts", kind)
    trainer.model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    try:
        os.rmdir(trainer.args.output_dir)
    except OSError:
        pass
    return {kind: out}


def loss_spans(kind: str, record: dict, render: Callable[[list, bool], str],
               completion_only: bool, eos: str = "") -> tuple[str, list[tuple[int, int]]]:
    """Text of one canonical record and the character spans that carry loss.

    :param kind: canonical record kind (messages, prompt_completion, text).
    :param render: ``render(messages, add_generation_prompt) -> str`` with the template of record.
    :param completion_only: if false the whole text carries loss.
    :returns: (text, spans). Assistant turns (messages) or the completion carry loss.
    """
    if kind == "messages":
        msgs = record["messages"]
        text = render(msgs, False)
        if not completion_only:
            return text, [(0, len(text))]
        spans = []
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                before, upto = render(msgs[:i], True), render(msgs[: i + 1], False)
                if not (text.startswith(before) and text.startswith(upto)):
                    raise ValueError("the chat template renders earlier turns differently once later turns "
                                     "follow, so assistant-only loss masks cannot be derived; set "
                                     "method.completion_only_loss=false or use another data.chat_template")
                spans.append((len(before), len(upto)))
    elif kind == "prompt_completion":
        text = record["prompt"] + record["completion"] + eos
        spans = [(len(record["prompt"]), len(text))]
    elif kind == "text":
        text = record["text"] + eos
        spans = [(0, len(text))]
    else:
        raise ValueError(f"no loss spans for record kind {kind!r}")
    return text, (spans if completion_only else [(0, len(text))])


def tokenize_records(records: Iterable[dict], tokenizer: Any, kind: str, completion_only: bool,
                     max_length: int) -> list[dict]:
    """``input_ids`` and ``completion_mask`` (1 = token carries loss) for each canonical record.

    :param tokenizer: a Hugging Face fast tokenizer whose ``chat_template`` is the template of record.
    """
    def render(messages, add_generation_prompt):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    rows = []
    for rec in records:
        text, spans = loss_spans(kind, rec, render, completion_only, eos=tokenizer.eos_token or "")
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=True,
                        max_length=max_length)
        rows.append({"input_ids": list(enc["input_ids"]),
                     "completion_mask": mask_from_offsets(enc["offset_mapping"], spans)})
    return rows


def mask_from_offsets(offsets: Iterable[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """1 for tokens whose first character lies in a loss span, else 0."""
    out = []
    for start, end in offsets:
        out.append(int(any(a <= start < b for a, b in spans) and end > start))
    return out
