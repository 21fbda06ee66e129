"""The OpenAI backend class and its config node: a remote, paid job planned and checked like a local one."""
from __future__ import annotations

import datetime
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, List, Optional

import core
from plugins.openai import prices, tokens, translate

HERE = Path(__file__).parent
JOB_STATE = "artifacts/openai/job.json"
"""The remote job's state in the run directory (ids, status, commands to re-attach and cancel), written by the
worker as the job goes; the evaluator reads the fine-tuned model's id from it."""
PROVIDER = "openai"
"""The provider named in the run's remote artefacts."""
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class OpenAIConfig(core.BackendConfig):
    """Config node ``backend=openai``: the OpenAI fine-tuning API, or any service that speaks it
    (``base_url``). ``native`` keys are merged into the job-creation request as they are
    (``backend.native.method.supervised.hyperparameters.batch_size=auto``)."""

    defaults: List[Any] = field(default_factory=lambda: [{"override /peft@_global_.peft": "none"}, "_self_"])
    """Hydra's defaults list of the option: ``backend=openai`` selects ``peft=none`` (a hosted job trains no
    local adapter); a ``peft=...`` given on the command line still wins, and is then refused."""
    name: str = "openai"
    """Backend name."""
    base_url: str = prices.DEFAULT_BASE_URL
    """The API's base URL: OpenAI's, or a compatible service's (docs/openai.md)."""
    key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable that holds the API key (the key itself is never in the config)."""
    max_cost_usd: float = core.number(5.0, ge=0)
    """Refuse a job whose estimated training cost (USD) is above this; raise it to spend more."""
    price_per_1m_tokens: Optional[float] = core.number(None, gt=0)
    """USD per million trained tokens; null: the dated table of plugins/openai/prices.py (needed for a model
    not in it)."""
    max_example_tokens: Optional[int] = core.number(None, ge=1)
    """Longest training example in tokens; null: the model's limit from the table (65,536)."""
    learning_rate_multiplier: Optional[float] = core.number(None, gt=0)
    """The API's learning-rate multiplier (it takes no absolute learning rate, so train.learning_rate is
    refused); null: the API's auto."""
    suffix: Optional[str] = None
    """Up to 64 characters added to the fine-tuned model's name (ft:...:suffix:id); null: none."""
    job_id: Optional[str] = None
    """Re-attach to this job instead of starting one (python -m plugins.openai attach RUN_DIR sets it)."""
    poll_seconds: float = core.number(10.0, gt=0)
    """Seconds between polls of the job, its events and checkpoints."""
    max_retries: int = core.number(5, ge=0)
    """Retries of a request that failed transiently (429, 5xx, time-outs), with the client's own backoff."""
    timeout_s: float = core.number(600.0, gt=0)
    """Seconds one request may take (the training file's upload included)."""


def today() -> datetime.date:
    """Today's date, UTC (tests replace it)."""
    return datetime.datetime.now(datetime.timezone.utc).date()


class OpenAIBackend(core.Trainer):
    """The OpenAI fine-tuning API (files + fine-tuning jobs), supervised and DPO, remote and paid: every
    example, hyperparameter and the cost are checked here before anything is uploaded."""

    name: ClassVar[str] = "openai"
    config_class: ClassVar[type] = OpenAIConfig
    engine_distribution: ClassVar[str] = "openai"
    install_hint: ClassVar[str] = "pip install 'anytune[openai]'"
    description: ClassVar[str] = ("OpenAI fine-tuning API (or a compatible service): hosted SFT and DPO; "
                                  "OpenAI ends new jobs on " + prices.SHUTDOWN)
    capabilities: ClassVar[core.Capabilities] = core.Capabilities(
        supports={
            "method.name": frozenset({"sft", "dpo"}),
            "peft.type": frozenset({"none"}),
            "data.kind": frozenset({"messages", "preference"}),
            "data.eval": frozenset({False, True}),
        },
        reads=core.fields("model.name_or_path", "method.name", "method.beta", "peft.type", "train.epochs",
                          "train.batch_size", "train.seed"),
        needs=frozenset(),  # no local tokenizer, template, weights or device: the service has them
    )

    def artifacts(self) -> dict[str, dict[str, Any]]:
        """The job's state file; the hosted model's id (``ft:...``) is known only once the job succeeded, and
        is then in the result's ``artifacts.model``."""
        return {"job": core.runproto.local_artifact(JOB_STATE)}

    def cost(self, plan_dir: Path) -> dict[str, Any] | None:
        """The training cost ``plan`` estimated (``plan/openai_job.json``: price table x billed tokens)."""
        spec = plan_dir / "openai_job.json"
        return json.loads(spec.read_text())["estimate"] if spec.is_file() else None

    def check(self) -> None:
        """The model, the API's hyperparameter ranges, the base URL and the key's variable, before any data
        is read."""
        job, b = self.job, self.config
        model = str(job.model.name_or_path)
        entry = prices.model_of(model)
        if entry is None and b.price_per_1m_tokens is None:
            local = os.path.sep in model or Path(model).exists()
            raise core.ConfigError(
                f"model.name_or_path={model}{' is a local model' if local else ' is not in the price table'}; "
                f"backend=openai fine-tunes a hosted model: set model.name_or_path=gpt-4.1-mini-2025-04-14 or another"
                f" snapshot of a fine-tunable family (as of {prices.PRICES_AS_OF}: {prices.describe()}); for a "
                "compatible service's model set backend.price_per_1m_tokens=<USD> too")
        method = translate.METHODS[job.method.name]
        if entry is not None and method not in entry.methods:
            raise core.ConfigError(f"method.name={job.method.name}: the API offers {method} fine-tuning for "
                                   f"{', '.join(entry.methods)} only on {entry.family}")
        epochs, (lo, hi) = job.train.epochs, prices.RANGES["n_epochs"]
        if epochs != int(epochs) or not lo <= epochs <= hi:
            raise core.ConfigError(f"train.epochs={epochs:g}: the API trains whole epochs, n_epochs from {lo} to "
                                   f"{hi}")
        lo, hi = prices.RANGES["batch_size"]
        if not lo <= job.train.batch_size <= hi:
            raise core.ConfigError(f"train.batch_size={job.train.batch_size}: the API's batch_size is from {lo} "
                                   f"to {hi}")
        if job.method.name == "dpo" and not 0 < job.method.beta <= prices.RANGES["beta"][1]:
            raise core.ConfigError(f"method.beta={job.method.beta:g}: the API's DPO beta must be > 0 and <= 2")
        if job.train.seed > prices.RANGES["seed"][1]:
            raise core.ConfigError(f"train.seed={job.train.seed}: the API's seed is at most "
                                   f"{prices.RANGES['seed'][1]}")
        if b.suffix is not None and not prices.RANGES["suffix"][0] <= len(str(b.suffix)) <= prices.RANGES["suffix"][1]:
            raise core.ConfigError(f"backend.suffix={b.suffix!r}: the API takes 1 to 64 characters")
        if not str(b.base_url).startswith(("http://", "https://")):
            raise core.ConfigError(f"backend.base_url={b.base_url!r} is not an http(s) URL "
                                   f"(OpenAI's is {prices.DEFAULT_BASE_URL})")
        if not ENV_NAME.match(str(b.key_env)):
            raise core.ConfigError(f"backend.key_env={b.key_env!r} is not an environment variable's name; it names "
                                   "the variable that holds the key (default OPENAI_API_KEY), never the key itself")
        if (str(b.base_url).rstrip("/") == prices.DEFAULT_BASE_URL and not b.job_id
                and today() >= datetime.date.fromisoformat(prices.SHUTDOWN)):
            raise core.ConfigError(f"OpenAI ended new self-serve fine-tuning jobs on {prices.SHUTDOWN}; point "
                                   "backend.base_url at a compatible service (docs/openai.md)")
        if not job.plan_only and not os.environ.get(b.key_env):
            raise core.ConfigError(f"backend=openai reads the API key from the environment variable {b.key_env}, "
                                   f"which is not set: export {b.key_env}=... (or name another variable with "
                                   "backend.key_env=NAME); plan_only=true needs no key")

    def plan(self, ctx: core.Context) -> core.Plan:
        """Write the API's training (and validation) file, the job request and the cost estimate into
        ``plan/``; refuse rows the API would reject and a cost above ``backend.max_cost_usd``."""
        job, b = ctx.job, ctx.config
        model = str(job.model.name_or_path)
        entry = prices.model_of(model)
        limit = b.max_example_tokens or (entry.max_example_tokens if entry else 65_536)
        try:
            count = tokens.count_line
            tokens.encoding()
        except tokens.TokenizerMissing as exc:
            raise core.ConfigError(str(exc)) from None
        files, bad, counts = {}, [], {}
        sources = {"train": ctx.data.train, "validation": ctx.data.eval}
        for part, path in sources.items():
            if path is None:
                continue
            lines, n, wrong = translate.api_files(ctx.data.kind, core.runproto.read_jsonl(str(path)),
                                                  ctx.rel(path), limit, count, tokens.longest_sequence)
            bad += wrong
            files[part], counts[part] = lines, n
        if bad:
            raise core.ConfigError(translate.bad_rows_message(bad, str(job.data.train)))
        if len(files["train"]) < prices.MIN_EXAMPLES:
            raise core.ConfigError(f"{ctx.rel(ctx.data.train)} has {len(files['train'])} example(s); the API needs "
                                   f"at least {prices.MIN_EXAMPLES} to fine-tune")
        written = {part: ctx.write(f"openai_{part}.jsonl",
                                   "".join(json.dumps(line, ensure_ascii=False) + "\n"
                                           for line in lines))
                   for part, lines in files.items()}
        est = translate.estimate(model, sum(counts["train"]), int(job.train.epochs), b.price_per_1m_tokens)
        est.update(validation_file_tokens=sum(counts.get("validation", [])), max_cost_usd=b.max_cost_usd,
                   longest_example_tokens=max(map(tokens.longest_sequence, files["train"])),
                   example_token_limit=limit,
                   examples=len(files["train"]), within_budget=est["usd"] <= b.max_cost_usd)
        spec = {
            "base_url": str(b.base_url), "key_env": str(b.key_env), "provider": PROVIDER,
            "files": written, "job": translate.job_payload(job), "estimate": est,
            "job_id": b.job_id or None, "state": JOB_STATE, "poll_seconds": float(b.poll_seconds),
            "max_retries": int(b.max_retries), "timeout_s": float(b.timeout_s),
            "attach": f"python -m plugins.openai attach {ctx.run_dir}",
            "cancel": f"python -m plugins.openai cancel {ctx.run_dir}",
        }
        plan_files = [ctx.write_json("openai_job.json", spec), *written.values(),
                      *ctx.ship(HERE / "worker.py", rename={"worker.py": "openai_worker.py"}),
                      *ctx.ship(core.runproto)]
        print(f"anytune: openai estimate: {est['billed_tokens']:,} billed tokens ({est['training_file_tokens']:,} "
              f"x {est['epochs']} epochs) x ${est['usd_per_1m_tokens']:g}/1M = ${est['usd']:.2f} "
              f"(backend.max_cost_usd={b.max_cost_usd:g}; prices as of {prices.PRICES_AS_OF})", file=sys.stderr)
        if not est["within_budget"] and not b.job_id:
            message = (f"the estimated cost ${est['usd']:.2f} is above backend.max_cost_usd={b.max_cost_usd:g}; "
                       f"raise it (backend.max_cost_usd={max(1, round(est['usd'] + 0.5))}) to run this job "
                       f"(the estimate is in {ctx.rel(ctx.plan_dir / 'openai_job.json')})")
            if not job.plan_only:
                raise core.ConfigError(message + "; nothing was uploaded")
            print(f"anytune: openai: {message}", file=sys.stderr)
        return core.Plan(command=[self.python(), plan_files[-2], plan_files[0]], files=plan_files)
