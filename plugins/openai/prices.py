"""The models the OpenAI fine-tuning API trains, their training price and limits: a dated table.

Prices change; the table says when it was read. A model not in it (a compatible service's, or one OpenAI
added later) needs ``backend.price_per_1m_tokens`` (and, if its limit differs, ``backend.max_example_tokens``).
"""
from __future__ import annotations

from dataclasses import dataclass

PRICES_AS_OF = "2026-11"
"""When the table was read from OpenAI's price list."""

SHUTDOWN = "2027-01-06"
"""OpenAI ends new self-serve fine-tuning jobs on this date (docs/openai.md)."""

DEFAULT_BASE_URL = "https://api.openai.com/v1"
"""OpenAI's own API; ``backend.base_url`` points the backend at a compatible service instead."""


@dataclass(frozen=True)
class Model:
    """One fine-tunable base model."""

    family: str
    """The family name, the prefix of its snapshots (``gpt-4.1-mini``)."""
    usd_per_1m_training_tokens: float
    """Training price per million trained tokens (tokens x epochs), supervised and DPO alike."""
    max_example_tokens: int = 65_536
    """Longest training example, in tokens, the API accepts for this model."""
    methods: tuple[str, ...] = ("supervised", "dpo")
    """Fine-tuning methods the API offers for it."""


MODELS: tuple[Model, ...] = (
    Model("gpt-4.1-nano", 1.50),
    Model("gpt-4o-mini", 3.00),
    Model("gpt-4.1-mini", 5.00),
    Model("gpt-4.1", 25.00),
    Model("gpt-4o", 25.00),
)
"""Fine-tunable families, as of :data:`PRICES_AS_OF` (longest family names are matched first)."""

MIN_EXAMPLES = 10
"""The API refuses a training file with fewer examples."""

RANGES = {
    "n_epochs": (1, 50),
    "batch_size": (1, 256),
    "beta": (0, 2),  # beta in (0, 2]
    "seed": (0, 2_147_483_647),
    "suffix": (1, 64),  # characters
}
"""The API's hyperparameter ranges (its OpenAPI description), checked here before anything is uploaded."""


def model_of(name: str) -> Model | None:
    """The table's entry for a model id: a snapshot (``gpt-4.1-mini-2025-04-14``), a family name, or a
    fine-tuned model (``ft:gpt-4.1-mini-2025-04-14:org::id``, trained further); None when unknown."""
    base = name.split(":")[1] if name.startswith("ft:") and name.count(":") >= 1 else name
    for m in sorted(MODELS, key=lambda m: -len(m.family)):
        if base == m.family or base.startswith(m.family + "-"):
            return m
    return None


def describe() -> str:
    """The table as one line per model, for error messages."""
    return "; ".join(f"{m.family}-* ${m.usd_per_1m_training_tokens:g}/1M" for m in MODELS)
