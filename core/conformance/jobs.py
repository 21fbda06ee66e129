"""The conformance suite's jobs: composed as ``python -m core <overrides>`` composes them, small and offline."""
from __future__ import annotations

from omegaconf import DictConfig

SMALL = ["offline=true", "train.device=cpu", "train.precision=fp32", "train.max_steps=8",
         "data.max_rows=32", "data.eval_fraction=0", "train.learning_rate=5e-3", "train.max_length=512",
         "train.batch_size=4"]
"""Overrides that make every conformance job small, offline and CPU-friendly (8 steps of 4 rows, fp32)."""

SMALL_OF: dict[str, list[str]] = {}
"""Backends whose small job is not :data:`SMALL`: name -> the overrides that replace it. A conformance class
declares it (``class TestX(BackendConformance, backend="x", small=[...])``): a remote API reads no
``train.max_steps`` or learning rate and trains a hosted model, not a local path."""

CANDIDATES_OF: dict[str, dict[str, list[list[str]]]] = {}
"""Backends whose non-default field values differ from the suite's (``fields.CANDIDATES``): name -> field ->
override lists, tried first (``candidates=`` of the conformance class; a hosted model name, not a local path)."""


def small_of(backend: str) -> list[str]:
    """The small job's overrides for ``backend``: :data:`SMALL`, or what its conformance class declared."""
    return list(SMALL_OF.get(backend, SMALL))


JOBS: dict[str, list[str]] = {
    "sft_lora": ["method=sft", "peft=lora"],
    "sft_dora": ["method=sft", "peft=dora"],
    "sft_packing": ["method=sft", "peft=lora", "method.packing=true"],
    "sft_eval": ["method=sft", "peft=lora", "data.eval_fraction=0.25", "train.eval_steps=4"],
    "dpo": ["method=dpo", "data=demo_pref", "peft=lora", "data.max_rows=16"],
    "orpo": ["method=orpo", "data=demo_pref", "peft=lora", "data.max_rows=16"],
}
"""The training jobs every backend that leaves local weights runs (``test_job``): name -> overrides on
top of :data:`SMALL` (and ``train.shuffle=false``, so the last step's rows are known). A full fine-tune
is ``test_curve_matches_reference``'s job."""


def compose(overrides: list[str]) -> DictConfig:
    """The job Hydra would compose for ``python -m core <overrides>``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from core import config, plugins

    plugins.registry()
    config.register()
    with initialize_config_module("conf", version_base="1.3"):
        return hydra_compose("config", overrides=config.open_mappings(list(overrides)))
