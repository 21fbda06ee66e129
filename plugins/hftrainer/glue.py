"""Worker-side glue for steps built on Hugging Face transformers (TRL, Unsloth, third parties, the
merged exporter and the held-out evaluator).

Shipped into ``plan/hfglue.py`` beside ``runproto.py`` and ``lossmask.py``; imports
transformers only inside functions, anytune never, so an ejected plan runs without anytune.
"""
from __future__ import annotations

import os
import time
import warnings
from typing import Any

import lossmask
import runproto

# transformers 5 renamed the attribute; TRL 1.16 and peft 0.21 still read the old name inside their own code, so
# every run's log carried a deprecation warning the user can do nothing about (anytune passes the new names)
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def metrics_callback(writer: runproto.MetricsWriter, order: dict[str, Any] | None = None,
                     rows: int | None = None) -> Any:
    """A ``transformers.TrainerCallback`` writing the Trainer's log rows as ``metrics.jsonl`` rows.

    :param order: the schedule the examples were put in (:func:`scheduled`), with ``rows`` training records:
        the epoch is then counted in passes over those records (the Trainer sees one pass of the schedule).
    """
    from transformers import TrainerCallback

    def epoch_of(state: Any, logs: dict) -> Any:
        if order and rows:
            return round(state.global_step * order["batch"] * order["accum"] / rows, 4)
        return logs.get("epoch")

    class MetricsCallback(TrainerCallback):
        """One metrics.jsonl row per training log and one per evaluation."""

        def on_train_begin(self, args, state, control, **kwargs):
            writer.restart()  # the clock starts with training, not loading

        def on_step_end(self, args, state, control, **kwargs):
            runproto.peak_memory_mb()  # the step's peak, read before the log that follows (an engine may reset it)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero:  # one row per step, from rank 0
                return
            logs = logs or {}
            tokens = state.num_input_tokens_seen or logs.get("num_tokens")
            common = {"step": state.global_step, "max_steps": state.max_steps, "epoch": epoch_of(state, logs)}
            if "loss" in logs:
                writer.write(**common, loss=logs["loss"], learning_rate=logs.get("learning_rate"),
                             grad_norm=logs.get("grad_norm"), tokens=int(tokens) if tokens else None)
            if "eval_loss" in logs:
                writer.write(**common, eval_loss=logs["eval_loss"])

    return MetricsCallback()


def scheduled(dataset: Any, order: dict[str, Any] | None) -> Any:
    """``dataset`` (a ``datasets.Dataset`` or a list) in the order of the job's schedule
    (``runproto.example_order``: seeded passes, cut to whole steps), or as it is when there is none (packing)."""
    if not order:
        return dataset
    idx = runproto.example_order(len(dataset), order["steps"], order["batch"], order["accum"], order["seed"],
                                 order["shuffle"])
    return dataset.select(idx) if hasattr(dataset, "select") else [dataset[i] for i in idx]


def checkpoints_callback() -> Any:
    """A ``transformers.TrainerCallback`` that marks each saved checkpoint complete and turns Ctrl-C into
    a clean stop: the step under way finishes, a resumable checkpoint is saved, ``train()`` returns.

    Its ``interrupted`` attribute says whether that happened.
    """
    import signal

    from transformers import TrainerCallback

    class Checkpoints(TrainerCallback):
        """Ctrl-C (SIGINT) while training: save a checkpoint at the end of the step, then stop."""

        interrupted = False
        _previous: Any = None

        def _on_sigint(self, signum, frame):
            self.interrupted = True

        def on_train_begin(self, args, state, control, **kwargs):
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

        def on_step_end(self, args, state, control, **kwargs):
            if self.interrupted:
                control.should_save = True
                control.should_training_stop = True

        def on_save(self, args, state, control, **kwargs):
            path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if state.is_world_process_zero and os.path.isdir(path):
                runproto.mark_complete(path)

        def on_train_end(self, args, state, control, **kwargs):
            if self._previous is not None:
                signal.signal(signal.SIGINT, self._previous)

    return Checkpoints()


def load_tokenizer(name_or_path: str, template_path: str | None, trust_remote_code: bool = False,
                   pad: bool = True) -> Any:
    """The model's tokenizer with the chat template of record (when the plan has one) and, with ``pad``,
    a pad token (eos when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if template_path and os.path.exists(template_path):
        with open(template_path, encoding="utf-8") as f:
            tokenizer.chat_template = f.read()
    if pad and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenize(path: str, tokenizer: Any, kind: str, completion_only: bool, max_length: int) -> list[dict]:
    """``input_ids`` and ``completion_mask`` of every record in a normalised JSONL file."""
    return lossmask.tokenize_records(runproto.read_jsonl(path), tokenizer, kind, completion_only, max_length)


def config_args(config_class: type, args: dict[str, Any]) -> Any:
    """``config_class(**args)`` adapted to the installed transformers: before 5.x activation checkpointing is
    called ``gradient_checkpointing``, and ``train_sampling_strategy`` does not exist (its sampler is random)."""
    import dataclasses

    args = dict(args)
    names = {f.name for f in dataclasses.fields(config_class)}
    if "activation_checkpointing" in args and "activation_checkpointing" not in names:
        args["gradient_checkpointing"] = args.pop("activation_checkpointing")
    if args.get("train_sampling_strategy") == "random" and "train_sampling_strategy" not in names:
        del args["train_sampling_strategy"]
    return config_class(**args)


def train(trainer: Any, out: dict[str, Any], tokenizer: Any = None, adapter: bool = True,
          save_artifacts: bool = True, resume: str | None = None) -> None:
    """Train a ``Trainer`` (TRL's trainers too), record its own final losses in the outcome ``out`` and
    save the weights (:func:`save`) into ``out["artifacts"]``.

    On Ctrl-C during a step the step finishes, a resumable checkpoint is saved (:func:`checkpoints_callback`)
    and so are the weights trained so far (``out["interrupted_at_step"]`` says where); then the interrupt goes
    on, so the process exits 130 and the core records ``interrupted``. The core computes steps and first/last
    loss from ``metrics.jsonl`` for every engine.

    :param resume: a checkpoint folder (``artifacts/checkpoints/checkpoint-N``) to continue from: weights,
        optimiser, schedule, random state and the position in the data.
    """
    out["trainable_parameters"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    out["artifacts"] = {}
    stop = checkpoints_callback()
    trainer.add_callback(stop)
    loop_start = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=resume)
        if stop.interrupted:
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C (or the core's) must not cut the save
        out["interrupted_at_step"] = trainer.state.global_step
        if save_artifacts and trainer.state.global_step > 0:
            out["artifacts"] = save(trainer, tokenizer, adapter)
        raise
    finally:
        out["train_seconds"] = round(time.time() - loop_start, 3)
    final = out["final"] = {"train_loss": result.training_loss}
    if trainer.eval_dataset is not None:
        metrics = trainer.evaluate()
        if "eval_loss" in metrics:
            final["eval_loss"] = metrics["eval_loss"]
    if save_artifacts:
        out["artifacts"] = save(trainer, tokenizer, adapter)


def save(trainer: Any, tokenizer: Any, adapter: bool) -> dict[str, dict]:
    """Save a Trainer's model: the adapter to ``artifacts/adapter`` (PEFT layout) or the whole model to
    ``artifacts/model``, tokenizer beside it; drop the trainer's output dir if it left nothing there.

    :returns: the outcome's ``artifacts`` entry.
    """
    kind = "adapter" if adapter else "model"
    path = f"{runproto.ARTIFACTS}/{kind}"
    if not trainer.is_world_process_zero():  # DDP replicas are equal: rank 0 saves
        return {kind: runproto.local_artifact(path)}
    trainer.model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    try:
        os.rmdir(trainer.args.output_dir)
    except OSError:
        pass
    return {kind: runproto.local_artifact(path)}
