"""The generation evaluators' classes and config nodes."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import core
from core import scores
from plugins import hftrainer
from plugins.heldout.step import HERE as HELDOUT, weights

HERE = Path(__file__).parent
GSM8K_TEST = "gsm8k/test.jsonl"
"""GSM8K's test split inside a data directory (``$ANYTUNE_DATA``, else the project's ``../shared/data``)."""
GSM8K_ANSWER = r"####\s*(\S+)"
"""GSM8K's final-answer line: ``#### 72``."""


def data_dirs() -> list[Path]:
    """Where a preset looks for its data set: ``$ANYTUNE_DATA``, then ``shared/data`` beside the checkout."""
    out = [Path(os.environ["ANYTUNE_DATA"]).expanduser()] if os.environ.get("ANYTUNE_DATA") else []
    return out + [Path(__file__).resolve().parents[3] / "shared" / "data"]


@dataclass
class GenerateConfig(core.StepConfig):
    """Config node ``eval=[generate]`` (fields: ``eval.generate.<field>=...``)."""

    name: str = "generate"
    """Evaluator name."""
    data: Optional[str] = None
    """JSONL rows to answer; null: the run's held-out data (``data/eval.jsonl``)."""
    prompt_field: Optional[str] = None
    """Field holding the question (sent as one user turn); null: canonical records (messages: every turn before
    the last assistant turn, whose content is the reference; prompt_completion: prompt and completion)."""
    answer_field: Optional[str] = None
    """Field holding the reference answer (with ``prompt_field``)."""
    system: Optional[str] = None
    """System prompt put before the question (``prompt_field`` rows only); null: none."""
    extract: Optional[str] = None
    """Regex whose first group (or whole match) is the answer in the generated text; null: the whole text."""
    answer_extract: Optional[str] = None
    """Regex applied to the reference the same way; null: the whole reference."""
    fallback: str = core.choice("none", "none", "last_number")
    """When ``extract`` finds nothing: none (the row is wrong) or last_number (the last number in the text)."""
    numeric: bool = False
    """Compare as numbers: commas, ``$`` and a trailing ``.`` dropped, ``72.0`` equals ``72``."""
    max_generated: int = core.number(256, ge=1)
    """Tokens generated at most per answer (transformers' max_new_tokens; greedy; generation also stops at the
    end-of-turn token). Not named max_new_tokens: the core treats any field with "token" in its name as a secret."""
    batch_size: int = core.number(8, ge=1)
    """Prompts per generate call (left-padded)."""
    max_rows: Optional[int] = core.number(None, ge=1)
    """Answer only the first N rows (null: all)."""


@dataclass
class Gsm8kConfig(GenerateConfig):
    """Config node ``eval=[gsm8k]``: the generation evaluator on GSM8K's test rows (``{"question", "answer"}``),
    the number after ``####`` compared (else the last number of the answer)."""

    name: str = "gsm8k"
    """Evaluator name."""
    data: Optional[str] = None
    """GSM8K test rows; null: ``gsm8k/test.jsonl`` under ``$ANYTUNE_DATA`` or the project's ``shared/data``."""
    prompt_field: Optional[str] = "question"
    """Field holding the question."""
    answer_field: Optional[str] = "answer"
    """Field holding the worked answer, whose ``#### N`` line is the reference."""
    extract: Optional[str] = GSM8K_ANSWER
    """The final-answer line in the generated text."""
    answer_extract: Optional[str] = GSM8K_ANSWER
    """The final-answer line in the reference."""
    fallback: str = core.choice("last_number", "none", "last_number")
    """A generation without ``####``: its last number counts."""
    numeric: bool = True
    """Compare as numbers."""


class GenerateEvaluator(core.Evaluator):
    """Greedy generation with the chat template of record, the answer extracted (a regex) and compared with the
    reference (exact match, or as numbers): the same scorer for every engine's artefact. Batched, left-padded,
    with a progress bar in the step's log; every answer is kept in ``artifacts/eval/<name>.jsonl``.
    Score (``core.scores``' schema): exact_match, n = rows, with its standard error."""

    name: ClassVar[str] = "generate"
    config_class: ClassVar[type] = GenerateConfig
    engine_distribution: ClassVar[str] = "peft"
    install_hint: ClassVar[str] = "pip install 'anytune[trl]' (or: pip install torch transformers peft)"
    description: ClassVar[str] = "Greedy answers with the template of record, regex-extracted, exact match"
    capabilities: ClassVar[core.Capabilities] = core.Capabilities(
        needs=frozenset({"weights", "tokenizer", "template"}),
    )

    def data_file(self) -> Path | None:
        """The rows to answer: ``data`` when set, else None (the run's held-out data)."""
        return Path(self.config.data).expanduser() if self.config.data else None

    def check(self) -> None:
        """Regexes compile, fields come in pairs, the data file exists and its first row has the fields;
        without a data file, the job has held-out data of a kind with a reference answer."""
        c, where = self.config, f"eval.{self.name}"
        for key in ("extract", "answer_extract"):
            if c[key] is not None:
                try:
                    rx = re.compile(c[key])
                except re.error as exc:
                    raise core.ConfigError(f"{where}.{key}={c[key]!r} is not a regular expression: {exc}") from exc
                if rx.groups > 1:
                    raise core.ConfigError(f"{where}.{key}={c[key]!r} has {rx.groups} groups; give one (the answer)"
                                           " or none (the whole match)")
        if (c.prompt_field is None) != (c.answer_field is None):
            raise core.ConfigError(f"{where}: set prompt_field and answer_field together (or neither, for the "
                                   "canonical records of the run's data)")
        path = self.data_file()
        if path is None:
            if c.prompt_field is not None:
                raise core.ConfigError(f"{where}.prompt_field applies to a file of your own: set {where}.data=FILE")
            job = self.job
            if not (job.data.get("eval") or (job.data.get("eval_fraction") or 0) > 0):
                raise core.ConfigError(f"eval=[{self.name}] answers the held-out rows and this job has none: set "
                                       f"data.eval=<file> or data.eval_fraction=<fraction>, or {where}.data=FILE")
            return
        if not path.is_file():
            raise core.ConfigError(f"{where}.data={path}: no such file")
        with open(path, encoding="utf-8") as f:
            first = f.readline()
        try:
            row = json.loads(first)
        except ValueError as exc:
            raise core.ConfigError(f"{path}:1 is not a JSON object: {exc}") from exc
        wanted = [c.prompt_field, c.answer_field] if c.prompt_field else ["messages"]
        missing = [k for k in wanted if not isinstance(row, dict) or k not in row]
        if missing and not (c.prompt_field is None and isinstance(row, dict) and {"prompt", "completion"} <= set(row)):
            raise core.ConfigError(f"{path}:1 has no field {', '.join(missing)} (set {where}.prompt_field and "
                                   f"{where}.answer_field to the question and answer fields)")

    def plan(self, ctx: core.Context) -> core.Plan:
        """Write ``<name>.json`` (what to answer, how to compare) and ship the worker with what it imports."""
        c = self.config
        loading = weights(ctx, self.name)
        path = self.data_file()
        if path is None:
            if ctx.data.eval is None:
                raise core.ConfigError(f"eval=[{self.name}] answers the held-out rows and {ctx.data.dir} has no "
                                       "eval.jsonl (set data.eval or data.eval_fraction, or "
                                       f"eval.{self.name}.data=FILE)")
            if ctx.data.kind not in ("messages", "prompt_completion"):
                raise core.ConfigError(f"eval=[{self.name}] needs rows with a reference answer; the held-out "
                                       f"records are of kind {ctx.data.kind} (set eval.{self.name}.data=FILE)")
        spec = {
            "name": self.name,
            **loading,
            "data": str(path.resolve()) if path is not None else ctx.rel(ctx.data.eval),
            "kind": "fields" if c.prompt_field else (ctx.data.kind if path is None else "auto"),
            "template": ctx.rel(ctx.data.template) if ctx.data.template is not None else None,
            **{k: c[k] for k in ("prompt_field", "answer_field", "system", "extract", "answer_extract", "fallback",
                                 "numeric", "max_generated", "batch_size", "max_rows")},
            "out": f"{core.runproto.ARTIFACTS}/eval/{self.name}.jsonl",
        }
        files = [ctx.write_json(f"{self.name}.json", spec),
                 *ctx.ship(HERE / "worker.py", rename={"worker.py": "generate_worker.py"}),
                 *ctx.ship(HELDOUT / "worker.py", rename={"worker.py": "heldout_worker.py"}),
                 *hftrainer.ship(ctx), *ctx.ship(scores)]
        return core.Plan(command=[self.python(), files[1], files[0]], files=files)


class Gsm8kEvaluator(GenerateEvaluator):
    """GSM8K (grade-school maths, MIT): each test question as one user turn, greedy answer, the number after
    ``####`` (else the last number) compared with the reference's. Score: exact_match over the rows."""

    name: ClassVar[str] = "gsm8k"
    config_class: ClassVar[type] = Gsm8kConfig
    description: ClassVar[str] = "GSM8K test accuracy: greedy answers, the #### number compared"

    def data_file(self) -> Path | None:
        """``data`` when set, else GSM8K's test split in the first data directory that has it."""
        if self.config.data:
            return Path(self.config.data).expanduser()
        for d in data_dirs():
            if (d / GSM8K_TEST).is_file():
                return d / GSM8K_TEST
        raise core.ConfigError(f"eval=[gsm8k] found no {GSM8K_TEST} under {', '.join(map(str, data_dirs()))}: "
                               "set eval.gsm8k.data=/path/to/gsm8k/test.jsonl (or ANYTUNE_DATA=<dir holding gsm8k/>)")
