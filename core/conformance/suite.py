"""The backend conformance suite: written once against anytune's step contract, run on every backend.

A conformance class subclasses :class:`BackendConformance` and names its backend
(``class TestMine(BackendConformance, backend="mine")``); its known gaps are declared in ``gaps``
(``core/conformance/gaps.py``). The pytest plugin (``core/conformance/plugin.py``) parametrises
every test with the backend, marks it with the backend's name, and turns the declared gaps into
strict xfails. Tests that train and compare losses run only for backends that leave local weights
(``"weights"`` in the capability table's ``needs``).

The tests:

- ``test_accepts[feature=value]``: validation (``core.runner.check``) accepts every value of every value
  feature (``core.capabilities.FEATURES``), with the settings the value needs beside it; a value refused
  must be absent from the capability table and declared a gap, a value accepted must be in the table.
- ``test_job[job]``: the jobs of :data:`~core.conformance.jobs.JOBS` train, log only schema metrics and
  lower the loss, and leave an artefact whose reference loss on the last step's rows (all rows when
  packed) is below the base model's and close to the last logged loss. DPO starts at ln 2 and ends with
  a positive chosen-minus-rejected margin; with held-out data the last ``eval_loss`` is the artefact's.
- ``test_examples_match_reference[kind]``: per-example losses of each SFT record kind equal the
  reference's (plain transformers, transformers' own assistant mask) within 1e-5, on a briefly trained
  tiny model.
- ``test_curve_matches_reference``: a full fine-tune with gradient accumulation and no shuffling logs, at
  every step, the loss of the same training written out in plain torch, within 1e-5, and saves the model
  that training ends with.
- ``test_interrupt_and_resume``: Ctrl-C mid-run saves a checkpoint; ``resume=RUN_DIR`` continues from it
  to the losses of the same job run without a break (backends that read ``train.save_steps``).
- ``test_field_reaches_engine[field]`` (:class:`~core.conformance.fields.FieldsReachEngine`).
"""
from __future__ import annotations

import copy
import math
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import pytest
from omegaconf import DictConfig, OmegaConf

from core import runproto
from core.capabilities import FEATURES, schema_fields
from core.conformance import reference as ref
from core.conformance.fields import FieldsReachEngine
from core.conformance.gaps import Gap
from core.conformance.jobs import CANDIDATES_OF, JOBS, SMALL, SMALL_OF, compose
from core.errors import UnsupportedFeature

TOLERANCE = 1e-5
"""Largest difference allowed between an engine's logged loss and the reference's (fp32)."""
LN2 = math.log(2)
SFT_KINDS = ("messages", "prompt_completion", "text")
EXAMPLE_KINDS = (*SFT_KINDS, "weighted")
"""``test_examples_match_reference``'s cases: each SFT kind, and conversations with per-turn loss flags."""
PARITY = ["offline=true", "train.device=cpu", "train.precision=fp32", "data.eval_fraction=0",
          "train.max_length=512", "train.shuffle=false"]
"""Overrides of the parity jobs: fp32 on CPU, the rows in file order."""
CURVE = {"batch_size": 2, "grad_accum": 2, "steps": 5, "learning_rate": 1e-3}
"""The whole-curve job: a full fine-tune, 5 steps of 2 micro-batches of 2 conversations."""
CURVE_ROWS = 7
"""Rows of the whole-curve job's data: 20 examples of 5 steps make 2 passes and 6 rows (the epoch boundaries
fall inside steps 2 and 4, the first inside a micro-batch): every engine fills each batch from the next pass."""
RESUME = ["offline=true", "train.device=cpu", "train.precision=fp32", "data.eval_fraction=0", "data.max_rows=24",
          "train.batch_size=2", "train.max_steps=40", "peft.dropout=0.1", "train.learning_rate=1e-3"]
"""The interrupted job: shuffled, with dropout (the random state must resume too), 40 steps over 24 rows."""
CASES = [(feature, value) for feature, values in FEATURES.items() for value in values]
"""Every value of every value feature: ``test_accepts``'s cases."""
GPU_TOLERANCE = 0.05
"""The same for a backend that runs only on an NVIDIA GPU (Unsloth), whose jobs train in bf16 on CUDA against
the fp32 reference: bf16 keeps 8 bits of mantissa (a relative step of 2**-8 = 0.4 %), so a loss near 5 moves
by ~0.02 from one rounding of the logits alone; 0.05 allows that plus the rounding of the layers before.
Measured on an H200 and justified in docs/unsloth.md."""
GPU_SWAP = {"train.device=cpu": "train.device=cuda", "train.precision=fp32": "train.precision=bf16"}
"""How the suite's CPU/fp32 overrides read for a backend that runs only on an NVIDIA GPU."""


def gpu_only(backend: str) -> bool:
    """True if the backend's capability table has no ``train.device=cpu`` (it runs only on an NVIDIA GPU)."""
    return not registry().backend(backend).capabilities.can("train.device", "cpu")


def for_backend(backend: str, overrides: Sequence[str]) -> list[str]:
    """The suite's overrides as ``backend`` runs them: CUDA and bf16 instead of CPU and fp32 for a GPU-only one;
    :data:`SMALL` replaced by the backend's own small job where its class declares one (``SMALL_OF``)."""
    if backend in SMALL_OF:
        overrides = [*SMALL_OF[backend], *(o for o in overrides if o not in SMALL)]
    return [GPU_SWAP.get(o, o) for o in overrides] if gpu_only(backend) else list(overrides)


def tolerance_of(backend: str) -> float:
    """Largest loss difference allowed against the reference on ``backend`` (:data:`TOLERANCE`, or
    :data:`GPU_TOLERANCE` for a backend that trains in bf16 on a GPU only)."""
    return GPU_TOLERANCE if gpu_only(backend) else TOLERANCE


def needs(*what: str) -> pytest.MarkDecorator:
    """The test runs only for backends whose capability table ``needs`` all of ``what`` (e.g. ``weights``)."""
    return pytest.mark.anytune_needs(*what)


def registry():
    from core import plugins

    return plugins.registry()


_ENGINES: set[str] = set()


def ensure_engine(backend: str) -> None:
    """The backend's engine is installed (its managed environment created on first use, as a job would);
    a missing engine fails the test, it is never skipped."""
    if backend in _ENGINES:
        return
    from core import runner
    from core.errors import EngineMissing

    step = registry().backend(backend)(compose([f"backend={backend}"]))
    try:
        runner.ensure_engines([step])
    except EngineMissing as exc:
        pytest.fail(f"backend {backend}: its engine is missing: {exc}", pytrace=False)
    _ENGINES.add(backend)


# -- validation ---------------------------------------------------------------------------------------

PRECISION_OF = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
_BASES: dict[tuple[str, bool], DictConfig] = {}


def validation_job(backend: str, feature: str, value: Any, assets: dict[str, str]) -> DictConfig:
    """The small job with ``feature=value`` and what that value needs beside it:

    - ``method.name=dpo|orpo`` and ``data.kind=preference``: preference data (and a preference method the
      backend lists, DPO first); ``method.loss_type``: DPO on preference data;
    - ``method.name=kto`` and ``data.kind=unpaired``: KTO on unpaired data, rows in order (``assets["unpaired"]``);
    - ``data.kind=prompt_completion|text``: a data file of that kind; ``data.eval=True``: a held-out fraction;
    - ``peft.type=qlora``: CUDA and a model every engine can quantise to NF4 (``assets["nf4_model"]``);
    - ``train.precision=fp16``: CUDA; ``model.dtype``: the training precision of that dtype (CUDA for float16).

    A feature's first value (its schema default) is the small job itself.
    """
    caps = registry().backend(backend).capabilities
    preference, edits = False, {}
    if value != FEATURES[feature][0]:
        if feature == "method.name" and value in ("dpo", "orpo"):
            preference = True
        elif (feature, value) in (("method.name", "kto"), ("data.kind", "unpaired")):
            edits.update({"data.train": assets["unpaired"], "method.name": "kto", "train.shuffle": False})
        elif feature == "method.loss_type":
            preference, edits["method.name"] = True, "dpo"
        elif feature == "data.kind" and value == "preference":
            preference = True
            edits["method.name"] = next((m for m in ("dpo", "orpo") if caps.can("method.name", m)), "dpo")
        elif feature == "data.kind":
            edits["data.train"] = assets[value]
        elif feature == "data.eval":
            edits["data.eval_fraction"] = 0.25
        elif feature == "peft.type" and value == "qlora":
            edits.update({"train.device": "cuda", "model.name_or_path": assets["nf4_model"]})
        elif feature == "train.precision" and value == "fp16":
            edits["train.device"] = "cuda"
        elif feature == "model.dtype":
            edits["train.precision"] = PRECISION_OF[value]
            if value == "float16":
                edits["train.device"] = "cuda"
        if feature not in ("data.kind", "data.eval"):
            edits[feature] = value
    elif f"{feature}={value}" in GPU_SWAP and gpu_only(backend):  # the small job's own value (swapped in its base)
        edits[feature] = value
    key = (backend, preference)
    if key not in _BASES:
        _BASES[key] = compose([f"backend={backend}", *for_backend(backend, SMALL),
                               *(["data=demo_pref", "data.max_rows=16"] if preference else [])])
    cfg = copy.deepcopy(_BASES[key])
    if (feature in schema_fields() and feature not in ("data.kind", "data.eval") and feature not in edits
            and OmegaConf.select(cfg, feature) != value):  # data.eval the feature is not data.eval the file
        edits[feature] = value  # the small job holds another value: the backend's option chose it (openai: peft)
    for k, v in edits.items():
        OmegaConf.update(cfg, k, v, merge=False)
    return cfg


# -- runs ---------------------------------------------------------------------------------------------


@dataclass
class Trained:
    """A finished training job."""

    cfg: DictConfig
    """The job as run (``config.yaml``: resolved)."""
    run_dir: Path
    result: dict
    rows: list[dict]
    """``metrics.jsonl``."""

    @property
    def losses(self) -> list[float]:
        """Logged training loss of each step."""
        return [r["loss"] for r in self.rows if "loss" in r]

    def records(self, split: str = "train") -> list[dict]:
        """The run's normalised records (``data/train.jsonl`` or ``data/eval.jsonl``), in file order."""
        return runproto.read_jsonl(str(self.run_dir / runproto.DATA / f"{split}.jsonl"))

    def artifact(self):
        """The saved model, loaded in float32: the adapter on its base, or the full model."""
        arts = self.result.get("artifacts") or {}
        if "adapter" in arts:
            return ref.load_model(self.cfg.model.name_or_path, self.run_dir / arts["adapter"]["path"])
        assert "model" in arts, f"no artefact in result.json: {arts}"
        return ref.load_model(self.run_dir / arts["model"]["path"])


def train(backend: str, overrides: list[str], run_dir: Path) -> Trained:
    """Validate the job (a refusal raises ``UnsupportedFeature``: what a declared gap expects), run it, and
    require that it succeeded and logged only metrics of the one schema."""
    from core import runner

    cfg = compose([f"backend={backend}", *for_backend(backend, overrides)])
    runner.check(copy.deepcopy(cfg), registry())
    result = runner.run(cfg, run_dir)
    assert result["status"] == "succeeded", result.get("error")
    rows = runproto.read_jsonl(str(run_dir / runproto.METRICS_FILE))
    outside = set().union(*rows) - set(runproto.METRICS)
    assert not outside, f"metrics outside the schema (core.runproto.METRICS): {sorted(outside)}"
    return Trained(OmegaConf.load(run_dir / runproto.CONFIG), run_dir, result, rows)


def record(request: pytest.FixtureRequest, name: str, value: Any) -> None:
    """Record a measured figure on the test (written to ``--junitxml`` reports as a property)."""
    request.node.user_properties.append((name, value))


def max_diff(got: Sequence[float], want: Sequence[float]) -> float:
    """Largest absolute difference of two loss curves (infinite when their lengths differ)."""
    return max((abs(a - b) for a, b in zip(got, want)), default=0.0) if len(got) == len(want) else math.inf


def close_to_logged(after: float, before: float, logged: float, what: str) -> None:
    """The artefact's reference loss ``after`` is below the base model's ``before`` and nearer the engine's
    last logged loss than the base's is (half the distance at most)."""
    assert after < before, f"{what}: the saved model's loss {after:.5f} is not below the base model's {before:.5f}"
    assert abs(after - logged) < abs(before - logged) / 2, (
        f"{what}: the saved model's loss {after:.5f} is far from the last logged loss {logged:.5f} "
        f"(the base model's is {before:.5f})")


# -- the suite ------------------------------------------------------------------------------------------


class BackendConformance(FieldsReachEngine):
    """The conformance suite. Subclass it with ``backend="<name>"`` (or several names) and declare the
    backend's known gaps in ``gaps``; pytest runs every test on each backend named."""

    backends: ClassVar[tuple[str, ...] | None] = None
    """Backends this class runs on (``backend=`` in the class statement); None: every registered backend."""
    gaps: ClassVar[Sequence[Gap]] = ()
    """Known gaps (``notimpl(...)``, ``notyet(...)``, ``never(...)``): strict xfails of the tests they name."""

    def __init_subclass__(cls, backend: str | Sequence[str] | None = None, small: Sequence[str] | None = None,
                          candidates: dict[str, list[list[str]]] | None = None, **kwargs: Any):
        """:param small: the backend's small job, replacing :data:`SMALL` (a remote API: no max_steps, a hosted
        model); :param candidates: field -> non-default override lists tried before the suite's own."""
        super().__init_subclass__(**kwargs)
        if backend is not None:
            cls.backends = (backend,) if isinstance(backend, str) else tuple(backend)
        for name in cls.backends or ():
            if small is not None:
                SMALL_OF[name] = list(small)
            if candidates is not None:
                CANDIDATES_OF[name] = dict(candidates)

    @pytest.fixture(autouse=True)
    def _anytune_engine(self, backend: str) -> None:
        ensure_engine(backend)

    def run_job(self, backend: str, overrides: list[str], tmp_path: Path):
        """(config, run directory, result) of one small job (:data:`SMALL` + ``overrides``), whatever its status."""
        from core import runner

        cfg = compose([f"backend={backend}", *for_backend(backend, [*SMALL, *overrides])])
        run_dir = tmp_path / "run"
        return cfg, run_dir, runner.run(cfg, run_dir)

    @pytest.mark.parametrize("feature,value", CASES, ids=[f"{f}={v}" for f, v in CASES])
    def test_accepts(self, backend: str, feature: str, value: Any, anytune_assets: dict[str, str]):
        """Validation accepts ``feature=value`` (listed in the table) or refuses it (absent from the table)."""
        from core import runner

        caps = registry().backend(backend).capabilities
        cfg = validation_job(backend, feature, value, anytune_assets)
        try:
            runner.check(cfg, registry())
        except UnsupportedFeature as exc:
            assert exc.field not in FEATURES or not caps.can(exc.field, exc.value), (
                f"validation refused {exc.field}={exc.value}, which {backend}'s capability table lists: {exc}")
            raise
        assert caps.can(feature, value), (
            f"validation accepted {feature}={value}, which {backend}'s capability table does not list")

    @pytest.mark.slow
    @needs("weights")
    @pytest.mark.parametrize("job", list(JOBS), ids=list(JOBS))
    def test_job(self, backend: str, job: str, tmp_path: Path, request: pytest.FixtureRequest):
        """Trains, lowers the loss, and leaves the model it trained (checked by its loss, not by generating)."""
        run = train(backend, [*SMALL, "train.shuffle=false", *JOBS[job]], tmp_path / "run")
        cfg, losses = run.cfg, run.losses
        assert len(losses) == cfg.train.max_steps, f"one loss per step expected: {losses}"
        assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, f"loss did not fall: {losses}"
        model, reference = cfg.model.name_or_path, ref.Reference(cfg.model.name_or_path, cfg.train.max_length)
        base, tuned = ref.load_model(model), run.artifact()
        records, batch = run.records(), cfg.train.batch_size
        last = [((len(losses) - 1) * batch + i) % len(records) for i in range(batch)]  # the last step's rows
        kind = runproto.read_json(str(run.run_dir / runproto.STATS))["kind"]
        if cfg.method.name == "sft":
            examples = [reference.encode(kind, r, cfg.method.completion_only_loss) for r in records]
            rows = examples if cfg.method.packing else [examples[i] for i in last]
            before, after = ref.token_mean(base, rows), ref.token_mean(tuned, rows)
            assert run.result["trainable_parameters"] == ref.trainable_parameters(model, cfg.peft)
        else:
            pairs = [reference.encode_preference(r) for r in records]
            rows = [pairs[i] for i in last]
            if cfg.method.name == "dpo":
                assert abs(losses[0] - LN2) < tolerance_of(backend), f"DPO step 1 (policy = reference) must be ln 2: {losses[0]}"
                before, (after, _) = LN2, ref.dpo(tuned, base, rows, cfg.method.beta)
                _, margin = ref.dpo(tuned, base, pairs, cfg.method.beta)
                assert margin > 0, f"the chosen-minus-rejected margin did not grow from 0: {margin}"
                record(request, "step1_minus_ln2", losses[0] - LN2)
                record(request, "margin", margin)
            else:
                before, after = ref.orpo(base, rows, cfg.method.beta), ref.orpo(tuned, rows, cfg.method.beta)
        close_to_logged(after, before, losses[-1], f"{job}, {'all rows' if cfg.method.packing else 'last step'}")
        record(request, "saved_base_logged", [after, before, losses[-1]])
        if (run.run_dir / runproto.EVAL).is_file():
            evals = [r for r in run.rows if "eval_loss" in r]
            every = cfg.train.eval_steps
            assert {r["step"] for r in evals} >= set(range(every, cfg.train.max_steps + 1, every)), evals
            held = [reference.encode(kind, r, cfg.method.completion_only_loss) for r in run.records("eval")]
            close_to_logged(ref.token_mean(tuned, held), ref.token_mean(base, held), evals[-1]["eval_loss"],
                            f"{job}, held-out rows")

    @pytest.mark.slow
    @needs("weights")
    @pytest.mark.parametrize("kind", EXAMPLE_KINDS, ids=list(EXAMPLE_KINDS))
    def test_examples_match_reference(self, backend: str, kind: str, anytune_trained_model: str, tmp_path: Path,
                                      request: pytest.FixtureRequest):
        """One example per step, the model all but unchanged (learning rate 1e-9): each step's loss is the
        reference's loss of that example, within 1e-5. ``weighted``: conversations whose first answer has
        ``weight: 0`` and whose second has a first part marked ``train: false``; the reference masks the records
        anytune prepared (checked to keep both flags) with transformers' own generation mask."""
        model, records = anytune_trained_model, ref.records_of_kind(kind, 4)
        data = ref.write_jsonl(tmp_path / f"{kind}.jsonl", records)
        run = train(backend, [*PARITY, f"model.name_or_path={model}", f"data.train={data}", "peft=lora",
                              "train.batch_size=1", "train.max_steps=4", "train.learning_rate=1e-9",
                              "train.save_artifacts=false"],
                    tmp_path / "run")
        reference = ref.Reference(model)
        if kind == "weighted":
            kind, records = "messages", run.records("train")
            assert all(r["messages"][1]["weight"] == 0 and r["messages"][3]["train_spans"] for r in records), records
        want = ref.example_losses(ref.load_model(model), [reference.encode(kind, r) for r in records])
        record(request, "max_abs_diff", max_diff(run.losses, want))
        assert run.losses == pytest.approx(want, abs=tolerance_of(backend), rel=0), (run.losses, want)

    @pytest.mark.slow
    @needs("weights")
    def test_curve_matches_reference(self, backend: str, anytune_trained_model: str, tmp_path: Path,
                                     request: pytest.FixtureRequest):
        """A full fine-tune, rows in order, 2 micro-batches of 2 per step, 5 steps over 7 rows (epoch boundaries
        inside steps): every step's loss is the plain-torch training's over the passes joined and cut into full
        batches (:func:`core.conformance.reference.sft_curve`), within 1e-5."""
        model, c = anytune_trained_model, CURVE
        records = ref.records_of_kind("messages", CURVE_ROWS)
        data = ref.write_jsonl(tmp_path / "curve.jsonl", records)
        run = train(backend, [*PARITY, f"model.name_or_path={model}", f"data.train={data}", "peft=none",
                              f"train.batch_size={c['batch_size']}", f"train.grad_accum={c['grad_accum']}",
                              f"train.max_steps={c['steps']}", f"train.learning_rate={c['learning_rate']}",
                              "train.lr_scheduler=linear", "train.warmup_ratio=0", "train.weight_decay=0",
                              "train.max_grad_norm=1.0", "train.optimizer=adamw"],
                    tmp_path / "run")
        per_pass = [ref.Reference(model).encode("messages", r) for r in records]
        need = c["steps"] * c["batch_size"] * c["grad_accum"]
        examples = (per_pass * -(-need // len(per_pass)))[:need]  # passes in file order, cut at the last step
        want, trained = ref.sft_curve(model, examples, **c)
        record(request, "max_abs_diff", max_diff(run.losses, want))
        assert run.losses == pytest.approx(want, abs=tolerance_of(backend), rel=0), (run.losses, want)
        assert run.result["trainable_parameters"] == ref.trainable_parameters(model, run.cfg.peft)
        last = examples[-c["batch_size"] * c["grad_accum"]:]  # the saved model is the reference's after step 5
        saved, expected = ref.token_mean(run.artifact(), last), ref.token_mean(trained, last)
        record(request, "saved_model_diff", saved - expected)
        assert saved == pytest.approx(expected, abs=tolerance_of(backend), rel=0), (saved, expected)

    @pytest.mark.slow
    @needs("weights")
    def test_interrupt_and_resume(self, backend: str, tmp_path: Path, request: pytest.FixtureRequest):
        """Ctrl-C in the middle of a shuffled LoRA job with dropout records ``interrupted`` and a complete
        checkpoint at the step it stopped after; ``python -m core resume=RUN_DIR`` continues from it and logs,
        step for step, the losses of the same job run without a break (same steps, same data order)."""
        from core import runner

        if not runner.can_resume(registry().backend(backend)):
            pytest.skip(f"{backend} does not read train.save_steps: it declares no checkpoints to resume from")
        overrides = for_backend(backend, RESUME)
        whole = train(backend, overrides, tmp_path / "whole")
        cut = tmp_path / "cut"
        cmd = [sys.executable, "-m", "core", f"backend={backend}", *overrides, f"run_dir={cut}"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        metrics, deadline = cut / runproto.METRICS_FILE, time.time() + 600
        while proc.poll() is None and time.time() < deadline:  # Ctrl-C once the third step is logged
            rows = runproto.read_jsonl(str(metrics)) if metrics.exists() else []
            if any(r.get("step", 0) >= 3 for r in rows):
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.05)
        _, err = proc.communicate(timeout=600)
        result = runproto.read_json(str(cut / runproto.RESULT))
        assert proc.returncode == 130 and result["status"] == "interrupted", (proc.returncode, result, err[-2000:])
        stopped = result["checkpoint"]["step"]
        record(request, "interrupted_at_step", stopped)
        assert 3 <= stopped < 40, result["checkpoint"]
        resumed = subprocess.run([sys.executable, "-m", "core", f"resume={cut}"], capture_output=True, text=True,
                                 timeout=600)
        result = runproto.read_json(str(cut / runproto.RESULT))
        assert resumed.returncode == 0 and result["status"] == "succeeded", (result, resumed.stderr[-2000:])
        assert result["resumed_from"]["step"] == stopped
        losses = [r["loss"] for r in runproto.read_jsonl(str(metrics)) if "loss" in r]
        record(request, "max_abs_diff", max_diff(losses, whole.losses))
        assert losses == pytest.approx(whole.losses, abs=tolerance_of(backend), rel=0), (stopped, losses, whole.losses)
        assert result["final"]["last_loss"] == pytest.approx(whole.result["final"]["last_loss"],
                                                             abs=tolerance_of(backend), rel=0)
