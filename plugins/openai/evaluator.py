"""The OpenAI evaluator: scores a hosted model through the same API (chat completions on ``data/eval.jsonl``).

Each held-out conversation is cut before its last assistant turn; the model answers the turns before it
(temperature 0) and its answer is compared with the reference: exact match (whitespace-trimmed) and token F1
(word overlap, as SQuAD scores answers). The same scores for any hosted model: the run's fine-tuned model
(``eval=[openai]`` after ``backend=openai``, or ``python -m core.after RUN_DIR eval=[openai]``) or any other
one (``eval.openai.model=gpt-4.1-mini-2025-04-14``, the base model for comparison).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import core
from plugins.openai import prices

HERE = Path(__file__).parent


@dataclass
class OpenAIEvalConfig(core.StepConfig):
    """Config node ``eval=[openai]`` (fields: ``eval.openai.<field>=...``)."""

    name: str = "openai"
    """Evaluator name."""
    model: Optional[str] = None
    """Hosted model to score; null: the run's fine-tuned model (from backend=openai)."""
    base_url: Optional[str] = None
    """The API's base URL; null: the run's backend.base_url, else OpenAI's."""
    key_env: Optional[str] = None
    """Environment variable that holds the API key; null: the run's backend.key_env, else OPENAI_API_KEY."""
    max_rows: Optional[int] = core.number(None, ge=1)
    """Score only the first N held-out rows (null: all)."""
    max_tokens: int = core.number(512, ge=1)
    """Longest answer, in tokens."""
    max_retries: int = core.number(5, ge=0)
    """Retries of a request that failed transiently (429, 5xx), with the client's own backoff."""


class OpenAIEvaluator(core.Evaluator):
    """Exact match and token F1 of a hosted model's answers to the held-out conversations."""

    name: ClassVar[str] = "openai"
    config_class: ClassVar[type] = OpenAIEvalConfig
    engine_distribution: ClassVar[str] = "openai"
    install_hint: ClassVar[str] = "pip install 'anytune[openai]'"
    description: ClassVar[str] = "A hosted model's answers on data/eval.jsonl through chat completions (exact match, F1)"
    capabilities: ClassVar[core.Capabilities] = core.Capabilities(
        supports={"data.kind": frozenset({"messages"})},
        needs=frozenset({"heldout"}),
    )

    def _setting(self, key: str, default: str) -> str:
        own = self.config.get(key)
        if own:
            return str(own)
        backend = self.job.get("backend") or {}
        return str(backend.get(key) or default) if backend.get("name") == "openai" else default

    def check(self) -> None:
        """A model to score: the run's own (backend=openai) or ``eval.openai.model``."""
        if not self.config.get("model") and (self.job.get("backend") or {}).get("name") != "openai":
            raise core.ConfigError("eval=[openai] scores a hosted model: the run's own with backend=openai, or "
                                   "name one with eval.openai.model=<model id>")

    def plan(self, ctx: core.Context) -> core.Plan:
        """Write ``openai_eval.json`` (what to score, where, which key variable) and ship the scorer."""
        model = ctx.config.get("model") or (ctx.artifacts.get("model") or {}).get("id")
        state = ctx.local("job")
        if not model and state is None:
            raise core.ConfigError("eval=[openai]: no hosted model to score (the run left no fine-tuned model); "
                                   "set eval.openai.model=<model id>")
        spec = {
            "model": model, "state": ctx.rel(state) if state is not None and not model else None,
            "base_url": self._setting("base_url", prices.DEFAULT_BASE_URL),
            "key_env": self._setting("key_env", "OPENAI_API_KEY"),
            "eval": ctx.rel(ctx.data.eval), "max_rows": ctx.config.max_rows,
            "max_tokens": int(ctx.config.max_tokens), "max_retries": int(ctx.config.max_retries),
        }
        files = [ctx.write_json("openai_eval.json", spec),
                 *ctx.ship(HERE / "eval_worker.py", rename={"eval_worker.py": "openai_eval_worker.py"}),
                 *ctx.ship(core.runproto, core.scores)]
        return core.Plan(command=[self.python(), files[1], files[0]], files=files)
