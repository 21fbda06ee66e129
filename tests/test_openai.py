"""backend=openai before anything is uploaded: the options it selects, what it refuses (fields it does not read,
the API's ranges, rows the API would reject, a cost above the budget), the API files and job request it plans,
the offline token counts and the estimate. No network, no server: plan_only=true, or refusals.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import plugins, runner
from core.conformance import compose
from plugins.openai import prices, tokens, translate

MODEL = "model.name_or_path=gpt-4.1-mini-2025-04-14"
SPEC = Path(__file__).parent / "openai_api" / "openapi-fine-tuning.json"


def job(*overrides: str) -> list[str]:
    """backend=openai with a fine-tunable model and nothing else: what a user types."""
    return ["backend=openai", MODEL, *overrides]


def plan(tmp_path: Path, *overrides: str) -> dict:
    """plan_only=true of the job; returns the result."""
    return runner.run(compose(job("plan_only=true", *overrides)), tmp_path)


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def chat(i: int, **assistant) -> dict:
    return {"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                         {"role": "assistant", "content": f"{i} + {i} = {2 * i}.", **assistant}]}


def test_the_backend_option_selects_peft_none_and_reads_no_more():
    """`backend=openai MODEL` needs no other override: its option selects peft=none; TRL's default stays lora."""
    cfg = compose(job("plan_only=true"))
    assert cfg.peft.type == "none"
    assert "defaults" not in cfg.backend
    runner.check(cfg, plugins.registry())
    assert compose(["backend=trl"]).peft.type == "lora"


@pytest.mark.parametrize("overrides, error_type, words", [
    (["peft=lora"], "UnsupportedFeature", "does not support peft.type=lora"),
    (["peft.r=8"], "ConfigError", "peft.r=8 has no effect with peft.type=none"),
    (["train.lr_scheduler=cosine"], "UnsupportedFeature", "train.lr_scheduler=cosine"),
    (["train.learning_rate=1e-4"], "UnreadField", "does not read train.learning_rate"),
    (["train.max_steps=10"], "UnreadField", "does not read train.max_steps"),
    (["train.grad_accum=2"], "UnreadField", "does not read train.grad_accum"),
    (["data.chat_template=chatml"], "UnreadField", "does not read data.chat_template"),
    (["method.completion_only_loss=false"], "UnsupportedFeature", "method.completion_only_loss=False"),
    (["method=orpo", "data=demo_pref"], "UnsupportedFeature", "method.name=orpo"),
    (["train.epochs=1.5"], "ConfigError", "whole epochs, n_epochs from 1 to 50"),
    (["train.epochs=51"], "ConfigError", "n_epochs from 1 to 50"),
    (["train.batch_size=257"], "ConfigError", "batch_size is from 1 to 256"),
    (["method=dpo", "data=demo_pref", "method.beta=2.5"], "ConfigError", "beta must be > 0 and <= 2"),
    (["train.seed=3000000000"], "ConfigError", "seed is at most 2147483647"),
    ([f"backend.suffix={'x' * 65}"], "ConfigError", "1 to 64 characters"),
    (["backend.learning_rate_multiplier=0"], "ConfigError", "backend.learning_rate_multiplier=0"),
    (["backend.max_cost_usd=-1"], "ConfigError", "backend.max_cost_usd=-1"),
    (["backend.key_env=sk-abc123"], "ConfigError", "never the key itself"),
    (["backend.base_url=api.example.com/v1"], "ConfigError", "not an http(s) URL"),
])
def test_refused_before_anything_is_read(tmp_path, overrides, error_type, words):
    """What the API would answer 400 to, or anytune would silently drop, is refused at validation: no plan."""
    result = plan(tmp_path, *overrides)
    assert result["status"] == "failed" and result["error_type"] == error_type, result
    assert words in result["error"], result["error"]
    assert not (tmp_path / "plan").exists()


def test_a_local_model_is_refused_naming_the_fine_tunable_ones(tmp_path):
    """The default model is the tiny local one: the error says what to set and lists the table."""
    result = runner.run(compose(["backend=openai", "plan_only=true"]), tmp_path)
    assert result["status"] == "failed", result
    assert "is a local model" in result["error"] and "gpt-4.1-mini-2025-04-14" in result["error"]
    assert "gpt-4.1-nano-* $1.5/1M" in result["error"]


def test_a_real_run_without_the_key_is_refused_plan_only_needs_none(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = runner.run(compose(job()), tmp_path / "run")
    assert result["status"] == "failed" and "OPENAI_API_KEY" in result["error"], result
    assert not (tmp_path / "run" / "plan").exists()
    assert plan(tmp_path / "planned")["status"] == "planned"


def test_the_price_table_and_the_api_ranges_agree_with_the_api_description():
    """prices.RANGES are the vendored OpenAPI description's ranges; every family of the table prices as dated."""
    schemas = json.loads(SPEC.read_text())["components"]["schemas"]
    hp = schemas["FineTuneDPOHyperparameters"]["properties"]
    integer = lambda prop: next(o for o in prop["oneOf"] if o.get("type") == "integer")  # noqa: E731
    assert (integer(hp["n_epochs"])["minimum"], integer(hp["n_epochs"])["maximum"]) == prices.RANGES["n_epochs"]
    assert (integer(hp["batch_size"])["minimum"], integer(hp["batch_size"])["maximum"]) == prices.RANGES["batch_size"]
    beta = next(o for o in hp["beta"]["oneOf"] if o.get("type") == "number")
    assert (beta["minimum"], beta["maximum"], beta["exclusiveMinimum"]) == (0, 2, True)
    request = schemas["CreateFineTuningJobRequest"]["properties"]
    assert (request["seed"]["minimum"], request["seed"]["maximum"]) == prices.RANGES["seed"]
    assert (request["suffix"]["minLength"], request["suffix"]["maxLength"]) == prices.RANGES["suffix"]
    assert {m.family: m.usd_per_1m_training_tokens for m in prices.MODELS} == {
        "gpt-4.1-nano": 1.5, "gpt-4o-mini": 3, "gpt-4.1-mini": 5, "gpt-4.1": 25, "gpt-4o": 25}
    assert prices.model_of("gpt-4o-mini-2024-07-18").family == "gpt-4o-mini"
    assert prices.model_of("gpt-4o-2024-08-06").family == "gpt-4o"
    assert prices.model_of("ft:gpt-4.1-nano-2025-04-14:org::abc").family == "gpt-4.1-nano"
    assert prices.model_of("llama-3-8b") is None


def test_tokens_are_counted_offline_from_the_shipped_ranks(tmp_path, monkeypatch):
    """A fresh ANYTUNE_HOME and no network at all: tiktoken's o200k_base is built from plugins/openai/data."""
    import tiktoken.load

    def no_network(url):
        raise AssertionError(f"tiktoken tried to fetch {url}")

    monkeypatch.setenv("ANYTUNE_HOME", str(tmp_path))
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    tokens.encoding.cache_clear()
    try:
        enc = tokens.encoding()
        assert enc.name == "o200k_base"
        assert enc.encode("Hello, world!") == [13225, 11, 2375, 0]  # o200k_base's ids
        assert tokens.count_messages([{"role": "user", "content": "Hello, world!"}]) == 3 + 1 + 4 + 3
    finally:
        tokens.encoding.cache_clear()


def test_plan_only_writes_the_api_files_and_the_estimate(tmp_path, monkeypatch, capsys):
    """plan_only=true: the training file in the API's format, the job request, the estimate (tokens x epochs x
    the dated price), printed too; no key needed, nothing sent."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = plan(tmp_path, "data.max_rows=40", "train.epochs=3", "backend.suffix=gsm8k", "train.seed=7")
    assert result["status"] == "planned", result
    p = tmp_path / "plan"
    spec = json.loads((p / "openai_job.json").read_text())
    lines = [json.loads(x) for x in (p / "openai_train.jsonl").read_text().splitlines()]
    records = [json.loads(x) for x in (tmp_path / "data" / "train.jsonl").read_text().splitlines()]
    assert len(lines) == len(records) == 40
    assert lines[0]["messages"][0] == records[0]["messages"][0]
    assert lines[0]["messages"][-1] == {**records[0]["messages"][-1], "weight": 1}
    assert spec["job"] == {
        "model": "gpt-4.1-mini-2025-04-14", "training_file": "<uploaded data/openai_train.jsonl>",
        "method": {"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": "auto"}}},
        "seed": 7, "suffix": "gsm8k", "metadata": {"anytune_run": "true"}}
    est = spec["estimate"]
    counted = sum(tokens.count_line(line) for line in lines)
    assert est["training_file_tokens"] == counted and est["billed_tokens"] == 3 * counted
    assert est["usd"] == round(3 * counted * 5.0 / 1e6, 4) and est["within_budget"]
    assert "prices.py, as of 2026-11" in est["price_source"]
    assert f"${est['usd']:.2f}" in capsys.readouterr().err
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "logs" / "train.stdout.log").exists()


def test_the_token_limit_applies_to_each_dpo_sequence():
    """A DPO line is billed for both sequences; the model's limit applies to each (the longer one)."""
    record = {"prompt": [{"role": "user", "content": "word " * 50}],
              "chosen": [{"role": "assistant", "content": "yes " * 30}],
              "rejected": [{"role": "assistant", "content": "no"}]}
    line = translate.api_line("preference", record, 1)
    billed, longest = tokens.count_line(line), tokens.longest_sequence(line)
    assert longest < billed

    def bad_rows(limit):
        return translate.api_files("preference", [record], "data/train.jsonl", limit, tokens.count_line,
                                   tokens.longest_sequence)[2]

    assert bad_rows(longest) == []
    assert bad_rows(longest - 1) == [f"data/train.jsonl row 1: it has {longest} tokens; the model's training "
                                     f"examples hold at most {longest - 1}"]


def test_dpo_pairs_become_the_apis_preference_lines(tmp_path):
    result = plan(tmp_path, "method=dpo", "data=demo_pref", "data.max_rows=12", "method.beta=0.5")
    assert result["status"] == "planned", result
    spec = json.loads((tmp_path / "plan" / "openai_job.json").read_text())
    assert spec["job"]["method"] == {"type": "dpo", "dpo": {"hyperparameters": {
        "n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": "auto", "beta": 0.5}}}
    records = [json.loads(x) for x in (tmp_path / "data" / "train.jsonl").read_text().splitlines()]
    line = json.loads((tmp_path / "plan" / "openai_train.jsonl").read_text().splitlines()[0])
    assert line["input"]["messages"] == [{k: v for k, v in t.items()} for t in records[0]["prompt"]]
    assert line["preferred_output"] == records[0]["chosen"] and line["non_preferred_output"] == records[0]["rejected"]


def test_per_turn_loss_flags_tools_and_calls_become_weight_and_the_apis_tool_format():
    record = {"messages": [
        {"role": "system", "content": "You can look up the weather."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}], "weight": 0},
        {"role": "tool", "content": "18C, sunny", "name": "weather"},
        {"role": "assistant", "content": "18C and sunny."}],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]}
    line = translate.api_line("messages", record, 7)
    assert line["tools"] == record["tools"]
    call, tool, answer = line["messages"][2], line["messages"][3], line["messages"][4]
    assert call == {"role": "assistant", "content": None, "weight": 0, "tool_calls": [
        {"id": "call_7_3_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]}
    assert tool == {"role": "tool", "content": "18C, sunny", "tool_call_id": "call_7_3_1"}
    assert answer == {"role": "assistant", "content": "18C and sunny.", "weight": 1}


def test_rows_the_api_would_reject_are_listed_with_file_and_row_before_any_upload(tmp_path):
    rows = [chat(i) for i in range(12)]
    rows[3]["messages"][1]["train_detail"] = [{"begin_offset": 0, "end_offset": 3, "train": True}]
    rows[8]["messages"][1]["content"] = "word " * 400
    data = write_rows(tmp_path / "rows.jsonl", rows)
    result = plan(tmp_path / "run", f"data.train={data}", "backend.max_example_tokens=300", "train.shuffle=true")
    assert result["status"] == "failed" and result["error_type"] == "ConfigError", result
    err = result["error"]
    assert "2 row(s) the OpenAI fine-tuning API would reject (nothing was uploaded" in err
    assert "data/train.jsonl row 4: turn 2 trains on part of its content only (train_spans)" in err
    assert "data/train.jsonl row 9: it has 4" in err and "hold at most 300" in err
    assert not (tmp_path / "run" / "plan" / "openai_train.jsonl").exists()


def test_fewer_than_ten_examples_are_refused(tmp_path):
    data = write_rows(tmp_path / "rows.jsonl", [chat(i) for i in range(9)])
    result = plan(tmp_path / "run", f"data.train={data}")
    assert result["status"] == "failed" and "has 9 example(s); the API needs at least 10" in result["error"]


def test_a_cost_above_the_budget_is_refused_unless_raised(tmp_path, monkeypatch):
    """300 rows x 50 epochs on gpt-4.1 is about $65: refused by default (the plan and estimate stay to read);
    plan_only plans it and says so; raising backend.max_cost_usd lets it through validation."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-used")
    big = ["model.name_or_path=gpt-4.1-2025-04-14", "train.epochs=50"]
    result = runner.run(compose(["backend=openai", *big]), tmp_path / "refused")
    assert result["status"] == "failed" and "is above backend.max_cost_usd=5" in result["error"], result
    assert "nothing was uploaded" in result["error"]
    est = json.loads((tmp_path / "refused" / "plan" / "openai_job.json").read_text())["estimate"]
    assert est["usd"] > 5 and not est["within_budget"]
    assert not (tmp_path / "refused" / "logs" / "train.stdout.log").exists()
    planned = runner.run(compose(["backend=openai", "plan_only=true", *big]), tmp_path / "planned")
    assert planned["status"] == "planned"
    raised = runner.run(compose(["backend=openai", "plan_only=true", *big, "backend.max_cost_usd=100"]),
                        tmp_path / "raised")
    assert json.loads((tmp_path / "raised" / "plan" / "openai_job.json").read_text())["estimate"]["within_budget"]
    assert raised["status"] == "planned"


def test_a_model_outside_the_table_needs_a_price(tmp_path):
    """A compatible service's model: refused without backend.price_per_1m_tokens, priced with it."""
    other = ["backend=openai", "plan_only=true", "model.name_or_path=acme-ft-8b", "data.max_rows=12"]
    refused = runner.run(compose(other), tmp_path / "a")
    assert refused["status"] == "failed" and "backend.price_per_1m_tokens" in refused["error"]
    priced = runner.run(compose([*other, "backend.price_per_1m_tokens=2",
                                 "backend.base_url=https://ft.example.com/v1"]), tmp_path / "b")
    assert priced["status"] == "planned", priced
    spec = json.loads((tmp_path / "b" / "plan" / "openai_job.json").read_text())
    assert spec["base_url"] == "https://ft.example.com/v1" and spec["estimate"]["usd_per_1m_tokens"] == 2


def test_openai_ends_new_jobs_on_its_date(tmp_path, monkeypatch):
    """From 2027-01-06 a new job against OpenAI itself is refused, pointing at a compatible service."""
    import datetime

    from plugins.openai import backend

    monkeypatch.setattr(backend, "today", lambda: datetime.date(2027, 1, 6))
    result = plan(tmp_path)
    assert result["status"] == "failed" and "ended new self-serve fine-tuning jobs on 2027-01-06" in result["error"]
    assert plan(tmp_path / "elsewhere", "backend.base_url=https://ft.example.com/v1")["status"] == "planned"


def test_the_key_never_reaches_a_file_of_the_run(tmp_path, monkeypatch):
    secret = "sk-live-DO-NOT-WRITE-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    assert plan(tmp_path, "data.max_rows=12")["status"] == "planned"
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(errors="replace"), path


def test_plugin_import_loads_no_client_and_workers_import_only_the_client_and_the_stdlib():
    """`python -m core` loads every plugin at start-up: importing plugins.openai imports neither the openai
    client nor tiktoken; the shipped workers import only openai, the standard library and the modules shipped
    beside them (runproto, scores)."""
    import ast
    import subprocess
    import sys

    code = ("import sys, plugins.openai; bad = [m for m in ('openai', 'tiktoken', 'httpx2') if m in sys.modules]; "
            "sys.exit(repr(bad) if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    here = Path(__file__).resolve().parents[1] / "plugins" / "openai"
    allowed = {"openai", "runproto", "scores", *sys.stdlib_module_names}
    for name in ("worker.py", "eval_worker.py"):
        tree = ast.parse((here / name).read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert imported <= allowed, (name, imported - allowed)


def test_the_evaluator_sends_tool_conversations_as_the_api_takes_them(monkeypatch):
    import importlib.util

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "core"))  # runproto, as shipped beside it
    spec = importlib.util.spec_from_file_location(
        "openai_eval_worker", Path(__file__).resolve().parents[1] / "plugins" / "openai" / "eval_worker.py")
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    record = {"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "weight": 0, "tool_calls": [
            {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18C", "name": "weather"},
        {"role": "assistant", "content": "18C and sunny."}]}
    prompt, reference = worker.prompt_and_reference(record)
    assert reference == "18C and sunny."
    assert prompt[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1_0", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]}
    assert prompt[2] == {"role": "tool", "content": "18C", "tool_call_id": "call_1_0"}
    assert worker.f1("18 C and sunny", "18C and sunny.") == 2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3)
