"""Every canonical field a backend reads reaches its engine with the job's value.

``FieldsReachEngine`` is a mixin of the conformance suite: one test per canonical
field (every readable field of :data:`core.capabilities.READABLE`, plus the value
features ``data.kind`` and ``data.eval``). For each field it plans the small job
(``plan_only=true``) at the field's schema default and at non-default values the
backend accepts, builds the ENGINE'S OWN effective configuration from each plan
(the subclass's :meth:`FieldsReachEngine.effective_configs`: TRL's ``SFTConfig``
after its ``__post_init__``, torchtune's recipe after ``setup`` ...) and asserts
that the engine holds the value ``config.yaml`` holds, read through the subclass's
``FIELD_MAP``. Each field is also checked under every method the backend accepts
(each method builds another engine configuration: TRL's ``DPOConfig`` is not its
``SFTConfig``, torchtune's DPO recipe is not its SFT recipe), at its default and in
one job per method with every field set away from its default at once
(:func:`everything_set`).

``FIELD_MAP`` is written by hand on the test side, never derived from the
translation it checks: canonical field -> how to read the field back from the
effective configuration, in canonical terms (``lora_alpha`` -> ``peft.alpha``,
``bf16=True`` -> ``train.precision=bf16``), or an :class:`Expect` when the engine
holds the value in other units (warm-up steps for ``train.warmup_ratio``). A field
the backend declares it reads (or a value feature) without an entry fails, so a new
read field forces a check. Values are chosen per field: every value of a value
feature the capability table accepts (each must plan; :data:`VALUE_NEEDS` lists what
a value needs beside it), and for the other fields the first of :data:`CANDIDATES`
the backend accepts. A field the backend does not read, and a feature value its table
lacks, must be refused at validation.

Planning every variant of every field happens once per backend and class (about 50
``plan_only`` runs of about 0.1 s; Hydra composes each group combination once), and
the effective configurations are built in one :meth:`~FieldsReachEngine.effective_configs`
call, so an engine in its own environment starts one process for all of them.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import pytest
from omegaconf import MISSING, DictConfig, OmegaConf

from core.capabilities import FEATURES, READABLE, default_of, schema_fields

#: Every field the mixin tests: the readable fields, then the value features that are not fields of the job.
FIELDS: tuple[str, ...] = READABLE + tuple(f for f in FEATURES if f not in READABLE)

#: Job of a preference method (the demo preference data, small).
PREFERENCE = ["data=demo_pref", "data.max_rows=16"]

#: Non-default values to try for each readable field that is not a value feature, first the backend accepts
#: wins: each a list of overrides on top of the small job (the field's own first, then what the value needs).
#: Placeholders are filled by :func:`assets`: ``{second_model}`` is a second tiny Llama (other dimensions,
#: NF4-quantisable), ``{prompt_completion}``, ``{text}`` and ``{unpaired}`` data files of those record kinds.
#: A conformance class may put its own first (``candidates=``), also for a value feature's needs
#: (``"data.kind=text": [[...]]``).
CANDIDATES: dict[str, list[list[str]]] = {
    "model.name_or_path": [["model.name_or_path={second_model}"]],
    "data.chat_template": [["data.chat_template=zephyr"], ["data.chat_template=llama3"]],
    "method.beta": [["method.beta=0.3"]],
    "peft.r": [["peft.r=8"]],
    "peft.alpha": [["peft.alpha=8"]],
    "peft.dropout": [["peft.dropout=0.1"]],
    "peft.target_modules": [["peft.target_modules=[q_proj,v_proj]"],
                            ["peft.target_modules=[q_proj,k_proj,v_proj,o_proj]"]],
    "train.epochs": [["train.epochs=2", "train.max_steps=-1"]],
    "train.max_steps": [["train.max_steps=4"]],
    "train.batch_size": [["train.batch_size=2"]],
    "train.grad_accum": [["train.grad_accum=2"]],
    "train.learning_rate": [["train.learning_rate=1e-3"]],
    "train.warmup_ratio": [["train.warmup_ratio=0.1"]],  # 0.8 of 8 steps: the rounding shows
    "train.weight_decay": [["train.weight_decay=0.01"]],
    "train.max_grad_norm": [["train.max_grad_norm=0.5"]],
    "train.max_length": [["train.max_length=448"]],  # no preference prompt fills it
    "train.seed": [["train.seed=7"]],
    "train.logging_steps": [["train.logging_steps=2"]],
    "train.eval_steps": [["train.eval_steps=2", "data.eval_fraction=0.25"]],
    "train.save_steps": [["train.save_steps=2"]],
    "train.devices": [["train.devices=2"]],
    "train.nodes": [["train.nodes=2"]],
}

#: What a value of a field needs beside its own override (``field=value``): alternatives, tried in order until
#: the backend accepts one. ``data.kind`` and ``data.eval`` have no override of their own.
VALUE_NEEDS: dict[tuple[str, Any], list[list[str]]] = {
    ("method.name", "dpo"): [PREFERENCE],
    ("method.name", "orpo"): [PREFERENCE],
    ("method.name", "kto"): [["data.train={unpaired}", "train.shuffle=false"]],  # TRL's KTO reads rows in order
    ("data.kind", "messages"): [[]],
    ("data.kind", "prompt_completion"): [["data.train={prompt_completion}"]],
    ("data.kind", "text"): [["data.train={text}"]],
    ("data.kind", "preference"): [["method.name=dpo", *PREFERENCE], ["method.name=orpo", *PREFERENCE]],
    ("data.kind", "unpaired"): [["method.name=kto", "data.train={unpaired}", "train.shuffle=false"]],
    ("data.eval", False): [[]],
    ("data.eval", True): [["data.eval_fraction=0.25"]],
    ("train.precision", "fp16"): [["train.device=cuda"]],
    ("model.dtype", "bfloat16"): [[], ["train.precision=bf16"]],
    ("model.dtype", "float16"): [[], ["train.precision=fp16", "train.device=cuda"]],
    ("peft.type", "qlora"): [["train.device=cuda"], ["train.device=cuda", "model.name_or_path={second_model}"]],
}

#: Error types of a refusal at validation.
REFUSALS = ("ConfigError", "UnsupportedFeature", "UnreadField")


def load_plan_module(path: Path, name: str):
    """A module a plan ships (its worker, ``hfglue``), imported with the plan directory first on ``sys.path``
    as its interpreter would; ``sys.path`` restored afterwards."""
    saved = list(sys.path)
    sys.path.insert(0, str(Path(path).parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


# -- how a field is read back -----------------------------------------------------------------------

Reader = Callable[[Mapping[str, Any], DictConfig], Any]
"""``reader(effective, job)``: the engine's value of a field, in canonical terms (compared with the job's)."""


@dataclasses.dataclass(frozen=True)
class Expect:
    """A field the engine holds in other units: ``read(effective, job)`` is compared with ``want(job, effective)``
    (e.g. warm-up steps against ``ceil(train.warmup_ratio * steps)``)."""

    read: Reader
    want: Callable[[DictConfig, Mapping[str, Any]], Any]


Check = Reader | Expect
"""A ``FIELD_MAP`` entry."""


def at(path: str, convert: Callable[[Any], Any] | None = None) -> Reader:
    """Reader of a dotted ``path`` into the effective configuration (dict keys or attributes), then ``convert``."""

    def read(effective: Mapping[str, Any], job: DictConfig) -> Any:
        value: Any = effective
        for part in path.split("."):
            value = value[part] if isinstance(value, Mapping) else getattr(value, part)
        return convert(value) if convert else value

    read.__doc__ = path
    return read


def constant(value: Any, why: str) -> Reader:
    """Reader of a value the engine has by construction (``why`` says which), e.g. a trainer that never packs."""

    def read(effective: Mapping[str, Any], job: DictConfig) -> Any:
        return value

    read.__doc__ = why
    return read


def agree(*readers: Reader) -> Reader:
    """Reader of a value the engine holds in several places: the value if they agree, else all of them."""

    def read(effective: Mapping[str, Any], job: DictConfig) -> Any:
        values = [r(effective, job) for r in readers]
        return values[0] if all(same(v, values[0]) for v in values) else ("disagree", *values)

    return read


def same(a: Any, b: Any) -> bool:
    """Equal, floats to 1e-9 relative, sequences element-wise."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (isinstance(a, bool) and isinstance(b, bool) and a == b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


# -- what the job says --------------------------------------------------------------------------------

PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""train.precision -> the dtype it computes in (schema: model.dtype=auto follows train.precision)."""
TEMPLATES = Path(__file__).resolve().parents[1] / "assets" / "templates"
"""The built-in chat templates (data.chat_template=<name>)."""
HF_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Linear layers of a Llama block: peft.target_modules=[all-linear] (every linear layer but the output head)."""


def steps_of(job: DictConfig, rows: int) -> int:
    """Optimiser steps the job asks for: train.max_steps, else train.epochs over ``rows`` records
    (``ceil(epochs * ceil(ceil(rows / batch_size) / grad_accum))``, as Hugging Face's Trainer counts them)."""
    t = job.train
    if t.max_steps > 0:
        return int(t.max_steps)
    batch = t.batch_size * t.get("devices", 1) * t.get("nodes", 1)  # a micro-step takes a batch per process
    return max(1, math.ceil(t.epochs * math.ceil(math.ceil(rows / batch) / t.grad_accum)))


def warmup_steps_of(job: DictConfig, steps: int) -> int:
    """Warm-up steps of train.warmup_ratio over ``steps``: ``ceil(ratio * steps)`` (transformers' rounding)."""
    return math.ceil(job.train.warmup_ratio * steps)


def template_of(job: DictConfig) -> str | None:
    """Text of the chat template the job names: a built-in's file, or the model's own (transformers' reading)."""
    name = job.data.chat_template
    if name:
        return (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(job.model.name_or_path).chat_template


def dtype_of(job: DictConfig, full_in_fp32: bool = False) -> str:
    """The dtype model.dtype asks for: itself, or for auto train.precision's (``full_in_fp32``: a full
    fine-tune keeps float32 master weights, as the engine documents)."""
    if job.model.dtype != "auto":
        return job.model.dtype
    if full_in_fp32 and job.peft.type == "none":
        return "float32"
    return PRECISION_DTYPES[job.train.precision]


def targets_of(job: DictConfig) -> list[str]:
    """peft.target_modules as Hugging Face module names, ``all-linear`` expanded for a Llama block."""
    targets = list(job.peft.target_modules)
    return sorted(HF_LINEAR) if targets == ["all-linear"] else sorted(targets)


def job_value(job: DictConfig, field: str, kind: str) -> Any:
    """The job's value of ``field`` (as config.yaml holds it); ``data.kind``/``data.eval`` as validation sees them."""
    from core.checks import features_of, value_of

    if field in ("data.kind", "data.eval"):
        return features_of(job, kind)[field]
    return value_of(job, field)


# -- assets: a second model and data of each record kind ----------------------------------------------


def build_second_model(out: Path) -> Path:
    """A second tiny Llama beside the shipped one: the same tokenizer and template, other dimensions (one
    layer, hidden 128, no grouped-query attention: every linear weight holds a multiple of 64 x 256 values,
    as NF4 quantisation needs), seed 1."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from core.config import asset

    tiny = Path(asset("tiny-llama"))
    if (out / "config.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig.from_pretrained(tiny)
    config.update(dict(hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4,
                       num_key_value_heads=4, head_dim=32))
    torch.manual_seed(1)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                 "generation_config.json"):
        if (tiny / name).is_file():
            shutil.copy(tiny / name, out / name)
    return out


def write_kind_data(out: Path) -> dict[str, Path]:
    """``prompt_completion`` and ``text`` data files made from the demo SFT conversations."""
    from core.config import asset

    out.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in Path(asset("demo/gsm8k_sft.jsonl")).read_text().splitlines()[:40]]
    files = {"prompt_completion": out / "prompt_completion.jsonl", "text": out / "text.jsonl"}
    with open(files["prompt_completion"], "w") as pc, open(files["text"], "w") as tx:
        for row in rows:
            q, a = row["messages"][0]["content"], row["messages"][1]["content"]
            pc.write(json.dumps({"prompt": q, "completion": a}) + "\n")
            tx.write(json.dumps({"text": f"Question: {q}\nAnswer: {a}"}) + "\n")
    return files


_ASSETS: dict[str, dict[str, str]] = {}


def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The placeholders of :data:`CANDIDATES` and :data:`VALUE_NEEDS` (``second_model``, ``prompt_completion``,
    ``text``), built once per session."""
    if not _ASSETS.get("paths"):
        root = tmp_path_factory.mktemp("field-assets")
        from core.conformance.reference import records_of_kind, write_jsonl

        files = write_kind_data(root / "data")
        files["unpaired"] = write_jsonl(root / "data" / "unpaired.jsonl", records_of_kind("unpaired", 40))
        _ASSETS["paths"] = {"second_model": str(build_second_model(root / "second-model")),
                            **{k: str(v) for k, v in files.items()}}
    return _ASSETS["paths"]


# -- planning the variants ----------------------------------------------------------------------------


def literal(value: Any) -> str:
    """A value as a Hydra override writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(literal(v) for v in value) + "]"
    return str(value)


@dataclasses.dataclass
class Variant:
    """One job of a field's test: planned (``run_dir``) or expected to be refused."""

    label: str
    alternatives: list[list[str]]
    """Override lists tried in order until the backend accepts one (one list when a refusal is expected)."""
    refuse: bool = False
    run_dir: Path | None = None
    job: DictConfig | None = None
    kind: str = ""
    error: str | None = None
    """Why it did not plan (every alternative's error)."""
    error_type: str | None = None
    """Type of the last alternative's error (a refusal at validation is one of :data:`REFUSALS`)."""
    effective: Mapping[str, Any] | None = None


@dataclasses.dataclass
class FieldCase:
    """Everything one field's test checks."""

    field: str
    mapped: bool
    """The backend reads the field (or it is a value feature): FIELD_MAP must say how to read it back."""
    variants: list[Variant]
    problems: list[str] = dataclasses.field(default_factory=list)


def _needs(field: str, value: Any) -> list[list[str]]:
    return VALUE_NEEDS.get((field, value), [[]])


def _own(field: str, value: Any) -> list[str]:
    return [] if field not in READABLE else [f"{field}={literal(value)}"]


def _base(field: str, caps: Any, small_job: DictConfig) -> list[str] | None:
    """Overrides that make ``field`` apply (its schema ``when``), with values the backend accepts;
    None when it cannot apply on this backend."""
    from core.checks import value_of

    when = schema_fields()[field].metadata.get("when", {}) if field in READABLE else {}
    out: list[str] = []
    for other, values in when.items():
        if value_of(small_job, other) in values:
            continue
        able = [v for v in values if caps.can(other, v)]
        if not able:
            return None
        out += [*_own(other, able[0]), *_needs(other, able[0])[0]]
    return out


STRUCTURAL = ("method.name", "peft.type", "data.kind", "data.eval", "model.dtype", "train.precision", "train.device")
"""Value features that change which other fields apply or which values are accepted: varied one at a time only,
never in :func:`everything_set`."""


def _applies_under(field: str, method: str, small_job: DictConfig) -> bool:
    """True if ``field`` has an effect in the small job with ``method.name=method``."""
    from core.checks import value_of

    when = schema_fields()[field].metadata.get("when", {}) if field in READABLE else {}
    return all(method in values if other == "method.name" else value_of(small_job, other) in values
               for other, values in when.items())


def _method_base(method: str, small_job: DictConfig) -> list[str]:
    from core.checks import value_of

    return [] if value_of(small_job, "method.name") == method else [*_own("method.name", method),
                                                                     *_needs("method.name", method)[0]]


def everything_set(caps: Any, method: str, small_job: DictConfig,
                   candidates: Mapping[str, list[list[str]]] = CANDIDATES) -> list[str]:
    """One job of ``method`` with every field that applies set away from its default at once: each candidate
    (or each value feature's first non-default value the backend accepts) whose overrides touch no key set
    before it. Catches a field that reaches the engine alone but not beside another one, or only under
    another method (each method builds another engine configuration: TRL's DPOConfig is not its SFTConfig)."""
    out = _method_base(method, small_job)
    keys = {o.split("=", 1)[0] for o in out}
    for field in FIELDS:
        if field in STRUCTURAL or not _applies_under(field, method, small_job):
            continue
        if field in FEATURES:
            values = [v for v in FEATURES[field][1:] if caps.can(field, v)]
            if not values:
                continue
            own = [*_own(field, values[0]), *_needs(field, values[0])[0]]
        elif field in caps.reads and field in candidates:
            own = candidates[field][0]
        else:
            continue
        if any(o.split("=", 1)[0] in keys for o in own):
            continue
        out += own
        keys |= {o.split("=", 1)[0] for o in own}
    return out


def variants_of(field: str, caps: Any, small_job: DictConfig,
                candidates: Mapping[str, list[list[str]]] = CANDIDATES) -> FieldCase:
    """The jobs of one field's test on a backend with capability table ``caps``: the field at its default
    and at each non-default value (under the first method it applies to), and under every method the
    backend accepts, at its default and in the job with :func:`everything_set`."""
    from core.checks import value_of

    mapped = field in caps.reads or field not in READABLE
    base = _base(field, caps, small_job)
    case = FieldCase(field, mapped, [])
    if field in FEATURES:
        default = FEATURES[field][0]
        values = FEATURES[field]
    else:
        f = schema_fields()[field]
        default = default_of(f)
        values = [default]
    own_default = [] if default is MISSING or value_of(small_job, field) == default or field in (
        "train.device", "train.precision") else _own(field, default)
    shown = f"{field}={literal(default) if default is not MISSING else 'default'}"
    # a backend may refuse a feature's schema default (its option chose another value: openai's peft=none)
    refuse_default = field in FEATURES and not caps.can(field, default)
    if base is not None:
        case.variants.append(Variant(f"{shown} (default)", [base + own_default], refuse=refuse_default))
    elif mapped:  # the backend reads it and cannot run any job it applies to: the table is wrong
        case.problems.append(f"{field} is read, but it applies only when {schema_fields()[field].metadata['when']} "
                             "and the backend accepts none of those values")
    if field in FEATURES:
        for value in values[1:]:
            ok = caps.can(field, value)
            needs = candidates.get(f"{field}={literal(value)}") or _needs(field, value)  # a backend's own first
            alternatives = [[*(base or []), *_own(field, value), *need] for need in needs]
            case.variants.append(Variant(f"{field}={literal(value)}", alternatives if ok else alternatives[:1],
                                         refuse=not ok))
    elif field not in candidates:
        case.problems.append(f"no candidate non-default value for {field}: add it to CANDIDATES "
                             "(core/conformance/fields.py)")
    elif base is not None or not mapped:
        alternatives = [[*(base or []), *c] for c in candidates[field]]
        refuse = field not in caps.reads
        case.variants.append(Variant(f"{field}: {' '.join(alternatives[0][len(base or []):])}",
                                     alternatives[:1] if refuse else alternatives, refuse=refuse))
    if mapped and field not in STRUCTURAL:
        seen = [v.alternatives[0] for v in case.variants]
        for method in FEATURES["method.name"]:
            if not caps.can("method.name", method) or not _applies_under(field, method, small_job):
                continue
            for label, overrides in ((f"{shown} (default), method.name={method}",
                                      _method_base(method, small_job) + own_default),
                                     (f"every field set, method.name={method}",
                                      everything_set(caps, method, small_job, candidates))):
                if refuse_default and "(default)" in label:
                    continue
                if overrides not in seen:
                    seen.append(overrides)
                    case.variants.append(Variant(label, [overrides]))
    return case


class Composer:
    """``compose([backend=..., *small, *overrides])``, fast: each set of group overrides (``data=demo_pref``)
    is composed by Hydra once; field overrides (``section.name=value``) are then parsed by Hydra's parser and
    applied as Hydra applies them (``OmegaConf.update(cfg, key, value, merge=True)``), on a copy."""

    def __init__(self, head: list[str]):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.head, self.bases = head, {}
        self.parser = OverridesParser.create()

    def __call__(self, overrides: list[str]) -> DictConfig:
        import copy

        from core.conformance.jobs import compose

        groups = tuple(o for o in overrides if "." not in o.split("=", 1)[0])
        if groups not in self.bases:
            self.bases[groups] = compose([*self.head, *groups])
        cfg = copy.deepcopy(self.bases[groups])
        for override in self.parser.parse_overrides([o for o in overrides if o not in groups]):
            OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)
        return cfg


def plan_cases(backend: str, root: Path, paths: Mapping[str, str], small: list[str]) -> dict[str, FieldCase]:
    """Plan every variant of every field on ``backend`` (identical jobs once) into ``root``; refusals are checked
    with the same call (validation stops them before any data is read)."""
    from core import plugins, runner, runproto
    from core.conformance.jobs import CANDIDATES_OF

    caps = plugins.registry().backend(backend).capabilities
    compose = Composer([f"backend={backend}", *small, "plan_only=true"])
    small_job = compose([])
    own = CANDIDATES_OF.get(backend, {})
    candidates = {**CANDIDATES, **{f: [*own[f], *CANDIDATES.get(f, [])] for f in own}}
    cases = {field: variants_of(field, caps, small_job, candidates) for field in FIELDS}
    done: dict[tuple[str, ...], tuple[dict, Path]] = {}
    for case in cases.values():
        for v in case.variants:
            errors = []
            for overrides in v.alternatives:
                key = tuple(o.format(**paths) for o in overrides)
                if key not in done:
                    run_dir = root / f"{len(done):03d}"
                    done[key] = (runner.run(compose(list(key)), run_dir), run_dir)
                result, run_dir = done[key]
                if result["status"] == "planned":
                    v.run_dir, v.job = run_dir, OmegaConf.load(run_dir / "config.yaml")
                    v.kind = runproto.read_json(str(run_dir / runproto.STATS))["kind"]
                    break
                v.error_type = result.get("error_type")
                errors.append(f"[{' '.join(key)}] {v.error_type}: {result.get('error')}")
                if v.error_type not in REFUSALS:
                    break
            v.error = "; ".join(errors) or None
    return cases


# -- the mixin ----------------------------------------------------------------------------------------

_CASES: dict[tuple[Any, ...], dict[str, FieldCase]] = {}


class FieldsReachEngine:
    """Conformance mixin: every canonical field the backend reads reaches its engine with the job's value.

    A backend's conformance class provides a ``backend`` fixture (its name), ``FIELD_MAP`` and
    ``effective_configs`` (or ``effective_config``).
    """

    FIELD_MAP: ClassVar[Mapping[str, Check]] = {}
    """canonical field -> how to read it back from the effective configuration (a :data:`Reader` giving the
    value in canonical terms, or an :class:`Expect`). Written by hand, never derived from the translation."""

    def effective_config(self, run_dir: Path) -> Mapping[str, Any]:
        """The engine's own effective configuration of the plan in ``run_dir`` (built as its worker or
        recipe builds it, after the engine applied its defaults)."""
        raise NotImplementedError(f"{type(self).__name__} must define effective_config or effective_configs")

    def effective_configs(self, run_dirs: list[Path]) -> list[Mapping[str, Any]]:
        """:meth:`effective_config` of each plan; override to build them all at once (one engine process).
        A plan whose configuration cannot be built gets ``{"error": ...}``, reported by its fields' tests."""
        out: list[Mapping[str, Any]] = []
        for run_dir in run_dirs:
            try:
                out.append(self.effective_config(run_dir))
            except Exception as exc:  # the engine refuses the plan: the fields it concerns fail, not all
                out.append({"error": f"{type(exc).__name__}: {exc}"})
        return out

    def field_cases(self, backend: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, FieldCase]:
        """Every field's variants on ``backend``, planned, with their effective configurations (once per session
        for a backend and an ``effective_configs``)."""
        from core.conformance.jobs import small_of

        # one planning per backend and way of reading its engine: classes sharing a provider share it
        key = (backend, type(self).effective_configs, type(self).effective_config)
        if key not in _CASES:
            paths = assets(tmp_path_factory)
            cases = plan_cases(backend, tmp_path_factory.mktemp(f"fields-{backend}"), paths, small_of(backend))
            planned = {v.run_dir: v for c in cases.values() for v in c.variants if v.run_dir and not v.refuse}
            dirs = sorted(planned)
            for run_dir, eff in zip(dirs, self.effective_configs(dirs)):
                for c in cases.values():
                    for v in c.variants:
                        if v.run_dir == run_dir:
                            v.effective = eff
            _CASES[key] = cases
        return _CASES[key]

    @pytest.mark.parametrize("field", FIELDS)
    def test_field_reaches_engine(self, backend: str, field: str, tmp_path_factory: pytest.TempPathFactory):
        """The engine's own configuration holds the job's value of ``field``, at its default and at a
        non-default value; a field or value the backend does not take is refused at validation."""
        assert self.FIELD_MAP, (f"{type(self).__name__} has no FIELD_MAP: give the backend's conformance class one "
                                "(canonical field -> how to read it from the engine's effective configuration) and "
                                "an effective_config(run_dir); core/conformance/fields.py says how")
        case = self.field_cases(backend, tmp_path_factory)[field]
        problems = list(case.problems)
        check = self.FIELD_MAP.get(field)
        if case.mapped and check is None:
            problems.append(f"{backend} reads {field} and {type(self).__name__}.FIELD_MAP has no entry for it: "
                            "say how to read it from the engine's effective configuration")
        for v in case.variants:
            if v.refuse:
                if v.run_dir is not None:
                    problems.append(f"{v.label}: planned, but {backend} does not take it: it must be refused "
                                    "at validation")
                elif v.error_type not in REFUSALS:
                    problems.append(f"{v.label}: {backend} does not take it, and it failed other than by a "
                                    f"refusal at validation: {v.error}")
                continue
            if v.run_dir is None:
                problems.append(f"{v.label}: {backend} accepts it by its capability table but the job did not "
                                f"plan: {v.error}")
                continue
            if check is None:
                continue
            eff = v.effective
            if eff is None or "error" in eff:
                problems.append(f"{v.label}: no effective configuration: {(eff or {}).get('error')} "
                                f"(plan: {v.run_dir})")
                continue
            if isinstance(check, Expect):
                got, want = check.read(eff, v.job), check.want(v.job, eff)
            else:
                got, want = check(eff, v.job), job_value(v.job, field, v.kind)
            if not same(got, want):
                problems.append(f"{v.label}: the engine holds {got!r}, the job says {want!r} "
                                f"(plan: {v.run_dir})")
        assert not problems, f"{backend} / {field}:\n  " + "\n  ".join(problems)


# -- readers for engines built on transformers' Trainer (TRL, the contrib hf backend, Unsloth ...) ---------

TRAINER_OPTIMIZERS = {"adamw_torch": "adamw", "adamw_torch_fused": "adamw", "sgd": "sgd"}
"""transformers' ``optim`` -> canonical train.optimizer."""


def _value(x: Any) -> Any:
    return getattr(x, "value", x)  # transformers' str enums (SchedulerType, IntervalStrategy ...)


def _resolved(path: Any) -> str:
    return str(Path(str(path)).expanduser().resolve())


def _trainer_steps(effective: Mapping[str, Any]) -> Any:
    """Optimiser steps the Trainer runs: ``max_steps``, else its count over the epochs (ceil of batches/accum).
    With an example order (``order``: the examples put in the schedule's order, read sequentially) the order
    must hold exactly those steps of the Trainer's batches."""
    a, order = effective["args"], effective.get("order")
    if order:
        mine = (int(a.max_steps), a.per_device_train_batch_size * launch_of(effective)["world"],
                a.gradient_accumulation_steps)
        if mine != (order["steps"], order["batch"], order["accum"]) or _value(a.train_sampling_strategy) != "sequential":
            return ("order disagrees with the Trainer", order, mine, _value(a.train_sampling_strategy))
        return int(a.max_steps)
    if a.max_steps > 0:
        return int(a.max_steps)
    batch = a.per_device_train_batch_size * launch_of(effective)["world"]  # each process reads its own batches
    per_epoch = max(1, math.ceil(math.ceil(effective["rows"] / batch)
                                 / a.gradient_accumulation_steps))
    return math.ceil(a.num_train_epochs * per_epoch)


def _checkpointing(effective: Mapping[str, Any], job: DictConfig) -> Any:
    a = effective["args"]  # transformers 5 resolves both names to one value; older ones have only the second
    values = [getattr(a, n) for n in ("activation_checkpointing", "gradient_checkpointing") if hasattr(a, n)]
    return values[0] if all(v is values[0] for v in values) else ("disagree", *values)


def _precision(effective: Mapping[str, Any], job: DictConfig) -> Any:
    a = effective["args"]
    if a.bf16 and a.fp16:
        return ("bf16 and fp16",)
    return "bf16" if a.bf16 else "fp16" if a.fp16 else "fp32"


def _peft_type(effective: Mapping[str, Any], job: DictConfig) -> str:
    lora, quant = effective["lora"], effective["load"].get("quantization_config")
    if lora is None:
        return "none" if quant is None else "4-bit base, no adapter"
    if quant is not None and getattr(quant, "load_in_4bit", False):
        return "qlora"
    return "dora" if lora.use_dora else "lora"


def _lora_targets(effective: Mapping[str, Any], job: DictConfig) -> list[str]:
    targets = effective["lora"].target_modules  # peft: "all-linear" = every linear layer but the output head
    return sorted(HF_LINEAR) if targets == "all-linear" else sorted(targets)


def _lora_dropout(effective: Mapping[str, Any], job: DictConfig) -> float:
    if getattr(effective["args"], "disable_dropout", False):  # TRL's preference trainers zero every nn.Dropout
        return 0.0
    return effective["lora"].lora_dropout


def _shuffle(effective: Mapping[str, Any], job: DictConfig) -> bool:
    a = effective["args"]
    if effective.get("order"):  # the worker orders the examples; the Trainer reads them in that order
        return bool(effective["order"]["shuffle"]) or _value(a.train_sampling_strategy) != "sequential"
    return _value(a.train_sampling_strategy) != "sequential" or bool(getattr(a, "shuffle_dataset", False))


def launch_of(effective: Mapping[str, Any]) -> dict[str, int]:
    """Processes per node, nodes and world size the plan's command starts, as PyTorch's launcher (torchrun) itself
    parses it (``effective["command"]``: ``plan/command.json``'s argv); one process when it runs the worker alone."""
    command = [str(c) for c in effective.get("command") or []]
    if "torch.distributed.run" not in command:
        return {"nproc_per_node": 1, "nnodes": 1, "world": 1}
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(command[command.index("torch.distributed.run") + 1:])
    nproc, nnodes = int(args.nproc_per_node), int(str(args.nnodes).split(":")[-1])
    return {"nproc_per_node": nproc, "nnodes": nnodes, "world": nproc * nnodes}


def _save_steps(effective: Mapping[str, Any], job: DictConfig) -> int:
    a = effective["args"]
    return a.save_steps if _value(a.save_strategy) == "steps" else 0


def _eval_steps(effective: Mapping[str, Any], job: DictConfig) -> int:
    a = effective["args"]
    return a.eval_steps if _value(a.eval_strategy) == "steps" else 0


TRAINER_FIELD_MAP: dict[str, Check] = {
    "model.name_or_path": Expect(
        lambda e, job: (_resolved(e["model"]), _resolved(e["tokenizer"].name_or_path)),
        lambda job, e: (_resolved(job.model.name_or_path),) * 2),
    "model.dtype": Expect(lambda e, job: str(e["load"]["dtype"]).replace("torch.", ""),
                          lambda job, e: dtype_of(job, full_in_fp32=True)),
    "model.trust_remote_code": at("load.trust_remote_code"),
    "data.chat_template": Expect(lambda e, job: e["tokenizer"].chat_template, lambda job, e: template_of(job)),
    "data.kind": at("kind"),
    "data.eval": lambda e, job: e["eval"] is not None,
    "peft.type": _peft_type,
    "peft.r": at("lora.r"),
    "peft.alpha": at("lora.lora_alpha"),
    "peft.dropout": _lora_dropout,
    "peft.target_modules": Expect(_lora_targets, lambda job, e: targets_of(job)),
    "train.epochs": Expect(lambda e, job: _trainer_steps(e), lambda job, e: steps_of(job, e["rows"])),
    "train.max_steps": Expect(lambda e, job: _trainer_steps(e), lambda job, e: steps_of(job, e["rows"])),
    "train.batch_size": agree(at("args.per_device_train_batch_size"), at("args.per_device_eval_batch_size")),
    "train.grad_accum": at("args.gradient_accumulation_steps"),
    "train.learning_rate": at("args.learning_rate"),
    "train.lr_scheduler": at("args.lr_scheduler_type", _value),
    "train.warmup_ratio": Expect(lambda e, job: e["args"].get_warmup_steps(_trainer_steps(e)),
                                 lambda job, e: warmup_steps_of(job, steps_of(job, e["rows"]))),
    "train.weight_decay": at("args.weight_decay"),
    "train.optimizer": at("args.optim", lambda v: TRAINER_OPTIMIZERS.get(_value(v), _value(v))),
    "train.max_grad_norm": at("args.max_grad_norm"),
    "train.precision": _precision,
    "train.gradient_checkpointing": _checkpointing,
    "train.device": at("args.use_cpu", lambda cpu: "cpu" if cpu else "cuda"),
    "train.seed": agree(at("args.seed"), at("args.data_seed")),
    "train.shuffle": _shuffle,
    "train.logging_steps": at("args.logging_steps"),
    "train.eval_steps": _eval_steps,
    "train.save_artifacts": at("save"),
    "train.save_steps": _save_steps,
    "train.strategy": lambda e, job: "fsdp" if e["args"].fsdp else "deepspeed" if e["args"].deepspeed else "ddp",
    "train.devices": lambda e, job: launch_of(e)["nproc_per_node"],
    "train.nodes": lambda e, job: launch_of(e)["nnodes"],
}
"""Readers for a backend whose worker builds a ``transformers.Trainer`` (or a TRL trainer). Its effective
configuration holds: ``args`` (the ``TrainingArguments``/TRL ``*Config`` object after ``__post_init__``),
``lora`` (``peft.LoraConfig`` or None), ``load`` (``from_pretrained`` kwargs), ``model`` (the path loaded),
``tokenizer`` (as the worker loads it), ``kind``, ``eval`` (eval data path or None), ``save`` and ``rows``
(training records), ``order`` when the worker orders the examples (``hftrainer.schedule``), and ``command``
(the plan's argv: the launcher and its process count). The method fields and ``train.max_length`` are the backend's own to add."""
