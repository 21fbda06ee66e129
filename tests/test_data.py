"""The data layer: formats, file types, column mapping, bad rows, splits, stats, demo data."""
from __future__ import annotations

import csv
import gzip
import importlib
import os
import json
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from core import data
from core.data import chat_template as template
from core.errors import ConfigError, DataError
from core.schema import DataConfig
from test_template import make_model_dir, train_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GSM8K = SHARED / "gsm8k" / "train.jsonl"
HH = SHARED / "hh-rlhf" / "harmless-base-test.jsonl.gz"
DEMO = Path(data.__file__).parent.parent / "assets" / "demo"

U = {"role": "user", "content": "What is 2+3?"}
A = {"role": "assistant", "content": "5"}
S = {"role": "system", "content": "Be brief."}


def cfg(train, **kw) -> DataConfig:
    """A data config as the runner passes it (an OmegaConf node of the schema)."""
    return OmegaConf.structured(DataConfig(train=str(train), **kw))


def write_jsonl(path: Path, rows: list) -> Path:
    """One line per row: dicts as JSON, strings written as they are (malformed lines, blank lines)."""
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def prep(tmp_path, c, method="sft", model=None, max_length=512, seed=0):
    out = tmp_path / "out"
    stats = data.prepare(c, method=method, model_path=str(model) if model else None, out_dir=out,
                         max_length=max_length, seed=seed)
    return stats, read(out / "train.jsonl"), read(out / "eval.jsonl")


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A model directory with only a tokenizer (BPE trained on GSM8K) and a ChatML template."""
    return make_model_dir(tmp_path_factory.mktemp("model"), chat_template=template.resolve("chatml", None))


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("row, kind, record", [
    ({"messages": [S, U, A]}, "messages", {"messages": [S, U, A]}),
    ({"messages": [U, A, {"role": "user", "content": "and 3+4?"}, {"role": "assistant", "content": "7"}]},
     "messages", {"messages": [U, A, {"role": "user", "content": "and 3+4?"}, {"role": "assistant", "content": "7"}]}),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+3?"}]},
                   {**A, "weight": 1, "name": "bot"}]}, "messages", {"messages": [U, A]}),
    ({"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "What is 2+3?"},
                        {"from": "gpt", "value": "5"}]}, "messages", {"messages": [S, U, A]}),
    ({"instruction": "Add.", "input": "2+3", "output": "5"}, "messages",
     {"messages": [{"role": "user", "content": "Add.\n\n2+3"}, A]}),
    ({"instruction": "What is 2+3?", "input": "", "output": "5"}, "messages", {"messages": [U, A]}),
    ({"instruction": "What is 2+3?", "output": "5"}, "messages", {"messages": [U, A]}),
    ({"prompt": "2+3=", "completion": "5"}, "prompt_completion", {"prompt": "2+3=", "completion": "5"}),
    ({"prompt": "What is 2+3?", "chosen": "5", "rejected": "6"}, "preference",
     {"prompt": [U], "chosen": [A], "rejected": [{"role": "assistant", "content": "6"}]}),
    ({"prompt": [S, U], "chosen": [A], "rejected": [{"role": "assistant", "content": "6"}]}, "preference",
     {"prompt": [S, U], "chosen": [A], "rejected": [{"role": "assistant", "content": "6"}]}),
    ({"chosen": [U, A], "rejected": [U, {"role": "assistant", "content": "6"}]}, "preference",
     {"prompt": [U], "chosen": [A], "rejected": [{"role": "assistant", "content": "6"}]}),
    ({"chosen": "\n\nHuman: What is 2+3?\n\nAssistant: 5", "rejected": "\n\nHuman: What is 2+3?\n\nAssistant:  6 "},
     "preference", {"prompt": [U], "chosen": [A], "rejected": [{"role": "assistant", "content": "6"}]}),
    ({"text": "Once upon a time."}, "text", {"text": "Once upon a time."}),
])
def test_each_format_normalises(tmp_path, row, kind, record):
    path = write_jsonl(tmp_path / "d.jsonl", [row, row])
    c = cfg(path, chat_template="chatml")
    assert data.detect_kind(c) == kind
    method = "dpo" if kind == "preference" else "sft"
    stats, train, evals = prep(tmp_path, c, method=method)
    assert stats["kind"] == kind and stats["rows"] == {"train": 2, "eval": 0}
    assert train == [record, record] and evals == []


def test_stated_format_wins_over_detection(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "2+3=", "completion": "5", "text": "x"}])
    assert data.detect_kind(cfg(path)) == "prompt_completion"
    assert data.detect_kind(cfg(path, format="text")) == "text"
    stats, train, _ = prep(tmp_path, cfg(path, format="text"))
    assert train == [{"text": "x"}] and stats["format"]["train"] == "text"


def test_system_prompt_added_only_where_missing(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [U, A]}, {"messages": [S, U, A]},
                                              {"instruction": "What is 2+3?", "output": "5"}])
    sys_msg = {"role": "system", "content": "You are terse."}
    _, train, _ = prep(tmp_path, cfg(path, format="messages", on_bad_rows="skip", chat_template="chatml",
                                     system_prompt="You are terse."))
    assert train == [{"messages": [sys_msg, U, A]}, {"messages": [S, U, A]}]
    pref = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "What is 2+3?", "chosen": "5", "rejected": "6"}])
    _, train, _ = prep(tmp_path, cfg(pref, chat_template="chatml", system_prompt="You are terse."), method="dpo")
    assert train[0]["prompt"] == [sys_msg, U]


# --------------------------------------------------------------------------- file types

ROWS = [{"prompt": f"{i}+1=", "completion": str(i + 1)} for i in range(5)]


def write_any(path: Path, rows: list[dict]) -> Path:
    """``rows`` in the file type that ``path``'s name says."""
    name = path.name.removesuffix(".gz")
    if name.endswith(".jsonl"):
        text = "".join(json.dumps(r) + "\n" for r in rows)
    elif name.endswith(".json"):
        text = json.dumps(rows, indent=2)
    elif name.endswith(".csv"):
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        text = buf.getvalue()
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        raw = path.with_name(name)
        pq.write_table(pa.Table.from_pylist(rows), raw)
        if path.name.endswith(".gz"):
            path.write_bytes(gzip.compress(raw.read_bytes()))
            raw.unlink()
        return path
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz", "d.json", "d.json.gz", "d.csv", "d.csv.gz",
                                  "d.parquet", "d.parquet.gz"])
def test_file_types(tmp_path, name):
    path = write_any(tmp_path / name, ROWS)
    c = cfg(path)
    assert data.detect_kind(c) == "prompt_completion"
    stats, train, _ = prep(tmp_path, c)
    assert train == ROWS
    assert stats["sources"]["train"] == str(path.resolve())


def test_json_file_of_json_lines(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert prep(tmp_path, cfg(path))[1] == ROWS


def test_messages_in_parquet_and_csv(tmp_path):
    rows = [{"messages": [U, A]}, {"messages": [S, U, A]}]
    _, train, _ = prep(tmp_path, cfg(write_any(tmp_path / "d.parquet", rows), chat_template="chatml"))
    assert train == rows
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('messages\n"' + json.dumps([U, A]).replace('"', '""') + '"\n')
    assert prep(tmp_path, cfg(csv_path, chat_template="chatml"))[1] == [{"messages": [U, A]}]


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "d.txt").write_text("hello")
    with pytest.raises(ConfigError, match=r"unknown file type.*\.jsonl, \.json, \.csv, \.parquet"):
        data.detect_kind(cfg(tmp_path / "d.txt"))
    with pytest.raises(ConfigError, match=r"data.train=.*absent.jsonl: no such file"):
        data.detect_kind(cfg(tmp_path / "absent.jsonl"))


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
    path = write_any(tmp_path / "d.parquet", ROWS)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ConfigError, match=r"needs pyarrow: pip install 'anytune\[parquet\]'"):
        data.detect_kind(cfg(path))


# --------------------------------------------------------------------------- column mapping


def test_column_mapping_gsm8k(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "Q1?", "answer": "A1", "id": 1}])
    c = cfg(path, columns={"prompt": "question", "completion": "answer"})
    assert data.detect_kind(c) == "prompt_completion"
    stats, train, _ = prep(tmp_path, c)
    assert train == [{"prompt": "Q1?", "completion": "A1"}]
    assert stats["columns"] == {"prompt": "question", "completion": "answer"}


def test_column_mapping_to_messages_needs_template_then_works(tmp_path, model):
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "Q1?", "answer": "A1"}])
    c = cfg(path, columns={"instruction": "question", "output": "answer"})
    with pytest.raises(ConfigError, match=r"needs a chat template.*data.chat_template=chatml"):
        prep(tmp_path, c)
    stats, train, _ = prep(tmp_path, c, model=model)  # the model's own template
    assert train == [{"messages": [{"role": "user", "content": "Q1?"}, {"role": "assistant", "content": "A1"}]}]
    assert stats["chat_template"]["source"].startswith("model:")


def test_mapped_column_missing_in_a_row(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "Q1?", "answer": "A1"}, {"question": "Q2?"}])
    with pytest.raises(DataError) as err:
        prep(tmp_path, cfg(path, columns={"prompt": "question", "completion": "answer"}))
    assert f"{path}:2: missing field 'answer' (data.columns.completion)" in str(err.value)


def test_bad_column_keys(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "Q1?", "answer": "A1"}])
    with pytest.raises(ConfigError, match=r"unknown canonical field 'promt' \(did you mean 'prompt'\?\)"):
        data.detect_kind(cfg(path, columns={"promt": "question"}))
    with pytest.raises(ConfigError, match=r"data.columns.prompt does not apply to the alpaca format"):
        data.detect_kind(cfg(path, format="alpaca", columns={"prompt": "question"}))


def test_undetectable_format_names_fields_and_fix(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "Q1?", "answer": "A1"}])
    with pytest.raises(ConfigError, match=r"first row \(line 1\) has fields question, answer.*data.columns"):
        data.detect_kind(cfg(path))


def test_detect_kind_reads_only_the_first_valid_row(tmp_path):
    rows = ["", "{broken", {"text": "ok"}] + ["{also broken"] * 50
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    assert data.detect_kind(cfg(path)) == "text"
    empty = write_jsonl(tmp_path / "e.jsonl", [])
    with pytest.raises(ConfigError, match="has no rows"):
        data.detect_kind(cfg(empty))


# --------------------------------------------------------------------------- bad rows

GOOD_MSG = {"messages": [U, A]}
GOOD_PREF = {"prompt": "What is 2+3?", "chosen": "5", "rejected": "6"}


@pytest.mark.parametrize("good, bad, reason", [
    (GOOD_MSG, '{"messages": [', "malformed JSON"),
    (GOOD_MSG, "[1, 2]", "wrong type: a row must be a JSON object, got a list"),
    (GOOD_MSG, {"conversation": []}, "missing field 'messages'"),
    (GOOD_MSG, {"messages": "hi"}, "wrong type: messages must be a list of turns, got a string"),
    (GOOD_MSG, {"messages": [{"role": "user", "content": 5}, A]}, "messages turn 1 content must be a string, got a number"),
    (GOOD_MSG, {"messages": [{"content": "x"}, A]}, "missing field 'role' in messages turn 1"),
    (GOOD_MSG, {"messages": [{"role": "bot", "content": "x"}, A]},
     "unknown role 'bot' in messages turn 1 (allowed roles: system, user, assistant, tool)"),
    (GOOD_MSG, {"messages": [U, {"role": "assistant", "content": "  \n"}]}, "empty content in messages turn 2 (assistant)"),
    (GOOD_MSG, {"messages": []}, "messages has no turns"),
    (GOOD_MSG, {"messages": [U, U, A]}, "two user turns in a row (turns 1 and 2)"),
    (GOOD_MSG, {"messages": [U, A, A]}, "two assistant turns in a row (turns 2 and 3)"),
    (GOOD_MSG, {"messages": [S, A, U, A]}, "turn 2 is assistant after the system turn"),
    (GOOD_MSG, {"messages": [A, U, A]}, "turn 1 is assistant; a conversation starts with a user turn"),
    (GOOD_MSG, {"messages": [U, A, S]}, "system turn 3 is not the first turn"),
    (GOOD_MSG, {"messages": [S, U]}, "no assistant turn in messages"),
    (GOOD_MSG, {"messages": [U, A, U]}, "ends with a user turn; its last turn must be assistant"),
    (GOOD_MSG, {"messages": [S]}, "has only a system turn"),
    (GOOD_PREF, {"prompt": "What is 2+3?", "chosen": "5", "rejected": "5"}, "chosen and rejected are identical"),
    (GOOD_PREF, {"prompt": "What is 2+3?", "chosen": "", "rejected": "5"}, "empty chosen"),
    (GOOD_PREF, {"prompt": "What is 2+3?", "chosen": 5, "rejected": "6"}, "wrong type: chosen must be a string or a list of turns, got a number"),
    (GOOD_PREF, {"prompt": [U, A], "chosen": "5", "rejected": "6"}, "prompt ends with an assistant turn; its last turn must be user"),
    (GOOD_PREF, {"chosen": "5", "rejected": "6"}, "chosen is not a dialogue"),
    (GOOD_PREF, {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hello\n\nAssistant: b"},
     "chosen and rejected differ before their last assistant turn (at turn 1"),
    (GOOD_PREF, {"chosen": "\n\nHuman: hi\n\nAssistant: a\n\nHuman: more", "rejected": "\n\nHuman: hi\n\nAssistant: b"},
     "chosen ends with a user turn"),
    (GOOD_PREF, {"chosen": "\n\nHuman: hi\n\nAssistant:", "rejected": "\n\nHuman: hi\n\nAssistant: b"},
     "empty content in chosen turn 2 (Assistant)"),
    (GOOD_PREF, {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: a"},
     "chosen and rejected are identical"),
])
def test_bad_row_reported_with_file_line_and_reason(tmp_path, good, bad, reason):
    path = write_jsonl(tmp_path / "d.jsonl", [good, "", bad, good])  # the bad row is on line 3
    method = "dpo" if good is GOOD_PREF else "sft"
    with pytest.raises(DataError) as err:
        prep(tmp_path, cfg(path, chat_template="chatml"), method=method)
    assert len(err.value.problems) == 1
    assert f"{path}:3: " in str(err.value)
    assert reason in str(err.value)
    assert not (tmp_path / "out" / "stats.json").exists()  # nothing written on error


def test_other_formats_bad_rows(tmp_path):
    cases = [
        ({"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "x"}]},
         "unknown role 'bot' in conversations turn 2 (allowed roles: human, user, gpt, assistant, system, observation, tool, function_call)"),
        ({"instruction": "", "output": "x"}, "empty instruction"),
        ({"instruction": "hi", "input": 3, "output": "x"}, "wrong type: input must be a string, got a number"),
    ]
    for i, (bad, reason) in enumerate(cases):
        fmt = "sharegpt" if "conversations" in bad else "alpaca"
        path = write_jsonl(tmp_path / f"d{i}.jsonl", [bad])
        with pytest.raises(DataError, match=f"{path}:1: {reason}".replace("(", r"\(").replace(")", r"\)")):
            prep(tmp_path, cfg(path, format=fmt, chat_template="chatml"))


def test_every_bad_row_is_listed(tmp_path):
    rows = [GOOD_MSG, "{oops", {"messages": [U, U]}, GOOD_MSG, {"messages": [A]}, GOOD_MSG]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as err:
        prep(tmp_path, cfg(path, chat_template="chatml"))
    assert [(f, n) for f, n, _ in err.value.problems] == [(str(path), 2), (str(path), 3), (str(path), 5)]
    assert str(err.value).startswith("3 bad row(s)")


def test_skip_mode_counts_and_keeps_reasons(tmp_path):
    rows = [GOOD_MSG, "{oops", {"messages": [U, U]}, GOOD_MSG, {"messages": [A]}, GOOD_MSG]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    stats, train, _ = prep(tmp_path, cfg(path, chat_template="chatml", on_bad_rows="skip"))
    assert stats["rows"]["train"] == 3 and train == [GOOD_MSG] * 3
    assert stats["skipped"]["count"] == 3
    assert [r["line"] for r in stats["skipped"]["reasons"]] == [2, 3, 5]
    assert "malformed JSON" in stats["skipped"]["reasons"][0]["reason"]
    assert json.loads((tmp_path / "out" / "stats.json").read_text()) == stats


def test_skip_mode_with_no_valid_rows_left(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": ""}, {"text": " "}])
    with pytest.raises(ConfigError, match=r"has no valid rows \(2 bad row\(s\) skipped; first: .*:1: empty text"):
        prep(tmp_path, cfg(path, format="text", on_bad_rows="skip"))


def test_csv_bad_row_has_its_file_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion\n"What is\ntwo plus two?",4\n,5\n"3+3=",6\n"a","b","c"\n'
                    '"spans\nthree\nlines",\n"4+4=",8\n')
    with pytest.raises(DataError) as err:
        prep(tmp_path, cfg(path))
    msg = str(err.value)
    assert f"{path}:4: empty prompt" in msg  # the quoted cell before spans lines 2-3
    assert f"{path}:6: has 3 fields, the header has 2" in msg
    assert f"{path}:7: empty completion" in msg  # a record is reported at the line it starts on
    assert len(err.value.problems) == 3


@pytest.mark.parametrize("name", ["d.json", "d.parquet"])
def test_json_array_and_parquet_bad_rows_say_row_n(tmp_path, name):
    rows = [{"prompt": "1+1=", "completion": "2"}, {"prompt": "2+2=", "completion": ""}]
    path = write_any(tmp_path / name, rows)
    with pytest.raises(DataError, match=rf"{path}:row 2: empty completion"):
        prep(tmp_path, cfg(path))


def test_malformed_json_array_names_the_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n{"text": "a"},\n{"text": "b",}\n]')
    with pytest.raises(DataError, match=rf"{path}:3: malformed JSON"):
        prep(tmp_path, cfg(path, format="text"))


def test_pretty_printed_single_object_is_one_clear_problem(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"text": "a"}, indent=2))
    with pytest.raises(DataError) as err:
        prep(tmp_path, cfg(path, format="text"))
    assert len(err.value.problems) == 1 and "the file is one JSON object" in str(err.value)


def test_template_refusal_is_a_bad_row(tmp_path):
    strict = tmp_path / "strict.jinja"
    strict.write_text("{% for m in messages %}{% if m.role == 'system' %}"
                      "{{ raise_exception('System role not supported') }}{% endif %}{{ m.content }}{% endfor %}")
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD_MSG, {"messages": [S, U, A]}])
    with pytest.raises(DataError, match=rf"{path}:2: the chat template refused it: System role not supported"):
        prep(tmp_path, cfg(path, chat_template=str(strict)))


def test_eval_file_bad_rows_are_reported_too(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [GOOD_MSG])
    evals = write_jsonl(tmp_path / "e.jsonl", [GOOD_MSG, {"messages": [U]}])
    with pytest.raises(DataError, match=rf"{evals}:2: no assistant turn"):
        prep(tmp_path, cfg(train, eval=str(evals), chat_template="chatml"))


def test_eval_file_of_another_kind_is_refused(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [GOOD_MSG])
    evals = write_jsonl(tmp_path / "e.jsonl", [{"text": "x"}])
    with pytest.raises(ConfigError, match=r"data.eval=.* is text data but data.train=.* is messages"):
        prep(tmp_path, cfg(train, eval=str(evals), chat_template="chatml"))


# --------------------------------------------------------------------------- method / kind


def test_method_kind_mismatch():
    with pytest.raises(ConfigError) as err:
        data.check_method("messages", "dpo", "my.jsonl")
    assert str(err.value).startswith("method.name=dpo needs preference data (prompt/chosen/rejected); "
                                      "data.train=my.jsonl is messages")
    with pytest.raises(ConfigError, match=r"method.name=orpo needs preference data.*the data is text"):
        data.check_method("text", "orpo")
    with pytest.raises(ConfigError, match=r"method.name=sft needs messages, prompt_completion or text data; "
                                          r".*preference.*method.name=dpo"):
        data.check_method("preference", "sft")
    for kind in ("messages", "prompt_completion", "text"):
        data.check_method(kind, "sft")
    data.check_method("preference", "dpo")
    data.check_method("preference", "orpo")


def test_prepare_checks_the_method_too(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD_MSG])
    with pytest.raises(ConfigError, match=rf"method.name=dpo needs preference data .*data.train={path} is messages"):
        prep(tmp_path, cfg(path, chat_template="chatml"), method="dpo")


# --------------------------------------------------------------------------- hh-rlhf


def hh_text(msgs: list[dict]) -> str:
    return "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in msgs)


def test_hh_rlhf_real_rows_split_at_shared_prefix(tmp_path):
    with gzip.open(HH, "rt") as f:
        rows = [json.loads(line) for _, line in zip(range(40), f)]
    path = write_jsonl(tmp_path / "hh.jsonl.gz", rows)
    stats, train, _ = prep(tmp_path, cfg(path, chat_template="chatml"), method="dpo")
    assert stats["kind"] == "preference" and len(train) == 40
    exact = 0
    for raw, rec in zip(rows, train):
        assert rec["prompt"][-1]["role"] == "user"
        assert [m["role"] for m in rec["chosen"]] == ["assistant"] == [m["role"] for m in rec["rejected"]]
        assert rec["chosen"] != rec["rejected"]
        assert raw["chosen"].rstrip().endswith(rec["chosen"][0]["content"])
        assert raw["rejected"].rstrip().endswith(rec["rejected"][0]["content"])
        assert raw["chosen"].startswith(hh_text(rec["prompt"])[:40])
        exact += hh_text(rec["prompt"] + rec["chosen"]) == raw["chosen"]
    assert exact >= 30  # the rest differ only by whitespace around turns, which parsing strips
    first = train[0]
    assert first["prompt"][0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert [m["role"] for m in first["prompt"]] == ["user", "assistant", "user", "assistant", "user"]


def test_hh_rlhf_whole_file_bad_rows_are_named(tmp_path):
    with pytest.raises(DataError) as err:
        prep(tmp_path, cfg(HH, chat_template="chatml"), method="dpo")
    lines = [n for _, n, _ in err.value.problems]
    assert 87 in lines and 1255 in lines
    assert all(f == str(HH) for f, _, _ in err.value.problems)
    stats, train, _ = prep(tmp_path, cfg(HH, chat_template="chatml", on_bad_rows="skip"), method="dpo")
    assert stats["skipped"]["count"] == len(lines) and len(train) == 2312 - len(lines)


# --------------------------------------------------------------------------- split


def test_eval_split_is_seeded_and_disjoint(tmp_path):
    rows = [{"text": f"row {i}"} for i in range(100)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    c = cfg(path, eval_fraction=0.1)
    s1, train1, eval1 = prep(tmp_path / "a", c, seed=7)
    s2, train2, eval2 = prep(tmp_path / "b", c, seed=7)
    _, _, eval3 = prep(tmp_path / "c", c, seed=8)
    assert (train1, eval1) == (train2, eval2) and s1["sha256"] == s2["sha256"]
    assert eval3 != eval1
    assert len(eval1) == 10 and len(train1) == 90 and s1["rows"] == {"train": 90, "eval": 10}
    assert sorted(r["text"] for r in train1 + eval1) == sorted(r["text"] for r in rows)
    assert train1 == [r for r in rows if r not in eval1]  # file order kept
    assert s1["eval_from"] == "eval_fraction"


def test_max_rows_caps_train_after_the_split(tmp_path):
    rows = [{"text": f"row {i}"} for i in range(100)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    stats, train, evals = prep(tmp_path, cfg(path, eval_fraction=0.1, max_rows=20), seed=7)
    _, full_train, full_eval = prep(tmp_path / "full", cfg(path, eval_fraction=0.1), seed=7)
    assert stats["rows"] == {"train": 20, "eval": 10}
    assert train == full_train[:20] and evals == full_eval
    stats, train, evals = prep(tmp_path, cfg(path, max_rows=5))
    assert train == rows[:5] and evals == [] and not (tmp_path / "out" / "eval.jsonl").exists()


def test_eval_file_is_used_instead_of_a_split(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"text": f"t{i}"} for i in range(10)])
    evals = write_any(tmp_path / "e.csv", [{"text": "e0"}, {"text": "e1"}])
    stats, tr, ev = prep(tmp_path, cfg(train, eval=str(evals), eval_fraction=0.5))
    assert len(tr) == 10 and ev == [{"text": "e0"}, {"text": "e1"}]
    assert stats["eval_from"] == "data.eval" and stats["sources"]["eval"] == str(evals.resolve())


def test_bad_split_settings(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}])
    with pytest.raises(ConfigError, match="eval_fraction=1.0 must be at least 0 and below 1"):
        prep(tmp_path, cfg(path, eval_fraction=1.0))
    with pytest.raises(ConfigError, match="max_rows=0 must be at least 1"):
        prep(tmp_path, cfg(path, max_rows=0))


# --------------------------------------------------------------------------- outputs and stats


def test_outputs_and_stale_files(tmp_path, model):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD_MSG] * 10)
    out = tmp_path / "out"
    prep(tmp_path, cfg(path, eval_fraction=0.2), model=model)
    assert (out / "chat_template.jinja").read_text() == template.resolve("chatml", None)
    assert len(read(out / "eval.jsonl")) == 2
    text = write_jsonl(tmp_path / "t.jsonl", [{"text": "x"}])
    stats, _, _ = prep(tmp_path, cfg(text), model=model)
    assert sorted(p.name for p in out.iterdir()) == ["stats.json", "train.jsonl"]  # stale ones removed
    assert stats["chat_template"] is None
    assert json.loads((out / "stats.json").read_text()) == stats


def test_token_stats_match_transformers(tmp_path, model):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(model))
    with open(GSM8K) as f:
        raw = [json.loads(line) for _, line in zip(range(60), f)]
    path = write_jsonl(tmp_path / "g.jsonl", raw)
    c = cfg(path, columns={"instruction": "question", "output": "answer"}, eval_fraction=0.25)
    stats, train, evals = prep(tmp_path, c, model=model, max_length=150)
    for split, rows in (("train", train), ("eval", evals)):
        lengths = [len(hf.apply_chat_template(r["messages"], tokenize=True, return_dict=False)) for r in rows]
        import numpy as np

        p = {f"p{q}": int(np.percentile(lengths, q, method="inverted_cdf")) for q in (50, 90, 99)}
        assert stats["tokens"][split] == {"total": sum(lengths), "mean": round(sum(lengths) / len(lengths), 1),
                                          "max": max(lengths), **p}
        assert stats["truncated"][split] == sum(n > 150 for n in lengths)
    assert 0 < stats["truncated"]["train"] < len(train)
    assert stats["tokenizer"] == str(model / "tokenizer.json")

    pc = cfg(path, columns={"prompt": "question", "completion": "answer"})
    stats, train, _ = prep(tmp_path, pc, model=model)
    lengths = [len(hf(r["prompt"] + r["completion"] + hf.eos_token, add_special_tokens=False)["input_ids"])
               for r in train]
    assert stats["tokens"]["train"]["total"] == sum(lengths) and stats["tokens"]["eval"] is None


def test_preference_tokens_count_the_longer_answer(tmp_path, model):
    rows = [{"prompt": "What is 2+3?", "chosen": "5", "rejected": "It is six, I think, but I am not sure."}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    stats, train, _ = prep(tmp_path, cfg(path), method="dpo", model=model)
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(model))
    longer = len(hf.apply_chat_template(train[0]["prompt"] + train[0]["rejected"], return_dict=False))
    assert stats["tokens"]["train"]["max"] == longer


def test_no_tokenizer_no_token_stats(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}])
    stats, _, _ = prep(tmp_path, cfg(path))
    assert stats["tokens"] is None and stats["truncated"] is None and stats["tokenizer"] is None


def test_full_gsm8k_prepares(tmp_path):
    """The whole GSM8K train set goes through (its speed is bench/overhead.py's business, not a test's)."""
    model = make_model_dir(tmp_path / "m", tokenizer=train_tokenizer(rows=2000, vocab_size=8000))
    c = cfg(GSM8K, columns={"prompt": "question", "completion": "answer"}, eval_fraction=0.05)
    stats, _, _ = prep(tmp_path, c, model=model)
    assert stats["rows"]["train"] + stats["rows"]["eval"] == 7473
    assert stats["tokens"]["train"]["total"] > 1_000_000


# --------------------------------------------------------------------------- demo data


def test_demo_sft_data():
    rows = read(DEMO / "gsm8k_sft.jsonl")
    assert len(rows) == 300
    with open(GSM8K) as f:
        first = json.loads(f.readline())
    assert rows[0] == {"messages": [{"role": "user", "content": first["question"]},
                                    {"role": "assistant", "content": first["answer"]}]}


def test_demo_data_prepares_without_bad_rows(tmp_path):
    stats, train, _ = prep(tmp_path, cfg(DEMO / "gsm8k_sft.jsonl", chat_template="chatml"))
    assert stats["kind"] == "messages" and len(train) == 300
    stats, train, _ = prep(tmp_path, cfg(DEMO / "hh_rlhf_pref.jsonl", chat_template="chatml"), method="dpo")
    assert stats["kind"] == "preference" and len(train) == 200 and stats["skipped"]["count"] == 0
    raw = read(DEMO / "hh_rlhf_pref.jsonl")
    assert all(set(r) == {"chosen", "rejected"} and r["chosen"].startswith("\n\nHuman: ") for r in raw)
    assert max(max(len(r["chosen"]), len(r["rejected"])) for r in raw) < 1200
    notice = (DEMO / "NOTICE").read_text()
    for needle in ("Copyright (c) 2021 OpenAI", "github.com/openai/grade-school-math",
                   "Copyright (c) 2022 Anthropic", "github.com/anthropics/hh-rlhf", "red-teaming"):
        assert needle in notice


def test_records_stay_one_line_each(tmp_path):
    rows = [{"text": "para\u2028graph\u2029end\x85next"}, {"text": "ünïcode ✓ kept readable"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    _, train, _ = prep(tmp_path, cfg(path))
    assert train == rows  # read() splits with str.splitlines, which breaks at U+2028
    assert "ünïcode ✓" in (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8")


def test_config_forms_and_missing_train(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}])
    assert data.detect_kind({"train": str(path)}) == "text"  # a plain mapping
    assert data.detect_kind(DataConfig(train=str(path))) == "text"  # the dataclass itself
    with pytest.raises(ConfigError, match="data.train is not set"):
        data.detect_kind(OmegaConf.structured(DataConfig))
    with pytest.raises(ConfigError, match=r"data.format='csv' is not allowed"):
        data.detect_kind({"train": str(path), "format": "csv"})


# --------------------------------------------------------------------------- kind, templated


def test_kind_from_the_caller_is_not_checked_again(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD_MSG])
    kind = data.detect_kind(cfg(path))
    data.check_method(kind, "sft")

    def checked_twice(*a, **kw):
        raise AssertionError("check_method ran again")

    monkeypatch.setattr(importlib.import_module("core.data.prepare"), "check_method", checked_twice)
    stats = data.prepare(cfg(path, chat_template="chatml"), method="sft", model_path=None, out_dir=tmp_path / "out",
                         max_length=512, seed=0, kind=kind)
    assert stats["kind"] == "messages"
    write_jsonl(path, [{"text": "changed since validation"}])
    with pytest.raises(ConfigError, match=r"is text \(plain text\) data, but it was messages \(chat turns\) data "
                                          r"when the job was validated"):
        data.prepare(cfg(path), method="sft", model_path=None, out_dir=tmp_path / "out", max_length=512, seed=0,
                     kind=kind)


@pytest.mark.parametrize("with_model", [False, True])
def test_untemplated_prepare_keeps_messages_and_writes_no_template(tmp_path, model, with_model):
    rows = [GOOD_MSG, {"messages": [S, U, A]}, {"messages": [U]}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "out"
    (out).mkdir()
    (out / "chat_template.jinja").write_text("stale")
    # no chat_template set and no model: fine, since no template is needed
    stats = data.prepare(cfg(path, on_bad_rows="skip", system_prompt="Be terse."), method="sft",
                         model_path=str(model) if with_model else None, out_dir=out, max_length=512, seed=0,
                         templated=False)
    assert not (out / "chat_template.jinja").exists()
    assert stats["chat_template"] is None and json.loads((out / "stats.json").read_text())["chat_template"] is None
    sys_msg = {"role": "system", "content": "Be terse."}
    assert read(out / "train.jsonl") == [{"messages": [sys_msg, U, A]}, {"messages": [S, U, A]}]
    assert stats["skipped"]["count"] == 1 and "no assistant turn" in stats["skipped"]["reasons"][0]["reason"]
    assert stats["tokens"] is None and stats["tokenizer"] is None  # conversations are not rendered, so not counted


def test_untemplated_prompt_completion_still_counts_tokens(tmp_path, model):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "2+3=", "completion": "5"}])
    kw = dict(method="sft", model_path=str(model), max_length=512, seed=0)
    plain = data.prepare(cfg(path), out_dir=tmp_path / "a", templated=False, **kw)
    templated = data.prepare(cfg(path), out_dir=tmp_path / "b", **kw)
    assert plain["tokens"] == templated["tokens"] and plain["tokens"]["train"]["total"] > 0


# --------------------------------------------------------------------------- token bound


def _sentencepiece_like(byte_fallback: bool):
    """A Llama-2-style tokenizer: Prepend + Replace(' ', '▁') normaliser, BPE with byte fallback."""
    from tokenizers import Tokenizer, models, normalizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=byte_fallback, unk_token=None if byte_fallback else "<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    bytes_ = [f"<0x{i:02X}>" for i in range(256)] if byte_fallback else []
    trainer = trainers.BpeTrainer(vocab_size=600 + len(bytes_), special_tokens=["<unk>", "<s>", "</s>", *bytes_],
                                  show_progress=False)
    with open(GSM8K) as f:
        tok.train_from_iterator([json.loads(line)["question"] for _, line in zip(range(300), f)], trainer)
    return tok


def _metaspace():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<unk>", "</s>"], unk_token="<unk>",
                                      show_progress=False)
    with open(GSM8K) as f:
        tok.train_from_iterator([json.loads(line)["question"] for _, line in zip(range(300), f)], trainer)
    return tok


def _prefix_space():
    from tokenizers import pre_tokenizers

    tok = train_tokenizer()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=True)])
    return tok


@pytest.mark.parametrize("make", [lambda: data.stats.load_tokenizer(str(TINY)), train_tokenizer, _prefix_space,
                                  lambda: _sentencepiece_like(True), lambda: _sentencepiece_like(False), _metaspace],
                         ids=["tiny-llama", "byte-level", "prefix-space", "byte-fallback", "unk", "metaspace"])
def test_token_bound_is_an_upper_bound(make):
    tok = make()
    bound = data.stats.token_bound(tok)
    assert bound is not None
    with open(GSM8K) as f:
        texts = [json.loads(line)["question"] for _, line in zip(range(200), f)]
    texts += ["", " ", "a", "  x  ", "Ünïcode ✓ 日本語 🙂", "\n\n\t", "<s></s><s>", "</s> a </s>b</s>",
              "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "x" * 300, "🙂" * 50, " 1 2 3 " * 20]
    for text, enc in zip(texts, tok.encode_batch(texts, add_special_tokens=False)):
        assert len(enc) <= bound(text), text


def test_token_bound_refuses_what_it_cannot_reason_about():
    from tokenizers import Regex, normalizers

    tok = train_tokenizer()
    tok.normalizer = normalizers.Replace(Regex(r"\d"), "digit")
    assert data.stats.token_bound(tok) is None
    tok.normalizer = normalizers.NFKC()
    assert data.stats.token_bound(tok)("ﷺ") == float("inf")  # not ASCII: NFKC may expand it, so encode it


def test_prompt_fills_max_length_counts_like_encoding_every_prompt(tmp_path, model):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(model))
    with open(GSM8K) as f:
        raw = [json.loads(line) for _, line in zip(range(200), f)]
    path = write_jsonl(tmp_path / "g.jsonl", raw)
    prompts = [len(hf.apply_chat_template([{"role": "user", "content": r["question"]}], add_generation_prompt=True,
                                          return_dict=False)) for r in raw]
    max_length = sorted(prompts)[150]  # about a quarter of the prompts reach it
    stats, _, _ = prep(tmp_path, cfg(path, columns={"instruction": "question", "output": "answer"}), model=model,
                       max_length=max_length)
    assert stats["prompt_fills_max_length"]["train"] == sum(n >= max_length for n in prompts) > 0


# --------------------------------------------------------------------------- cache

TINY = Path(data.__file__).parent.parent / "assets" / "tiny-llama"


def cached(tmp_path, c, out="out", cache="cache", **kw):
    """prepare() into tmp_path/out with the cache tmp_path/cache; returns (stats, out_dir)."""
    args = dict(method="sft", model_path=None, max_length=512, seed=0)
    args.update(kw)
    if args["model_path"] is not None:
        args["model_path"] = str(args["model_path"])
    stats = data.prepare(c, out_dir=tmp_path / out, cache=tmp_path / cache, **args)
    return stats, tmp_path / out


def entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


VOLATILE = ("cache", "cache_key", "seconds")


def same_stats(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if k not in VOLATILE} == {k: v for k, v in b.items() if k not in VOLATILE}


def test_cache_hit_gives_identical_files_and_stats(tmp_path, model):
    rows = [GOOD_MSG, {"messages": [S, U, A]}] * 10 + [{"messages": [U]}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    c = cfg(path, eval_fraction=0.2, on_bad_rows="skip")
    first, out1 = cached(tmp_path, c, out="one", model_path=model)
    assert first["cache"] == "miss" and len(first["cache_key"]) == 64
    assert entries(tmp_path / "cache") == [first["cache_key"]]
    second, out2 = cached(tmp_path, c, out="two", model_path=model)
    assert second["cache"] == "hit" and second["cache_key"] == first["cache_key"]
    assert same_stats(first, second) and second["tokens"]["train"]["total"] > 0 and second["skipped"]["count"] == 1
    for name in ("train.jsonl", "eval.jsonl", "chat_template.jinja"):
        assert (out1 / name).read_bytes() == (out2 / name).read_bytes()
    assert sorted(p.name for p in out2.iterdir()) == ["chat_template.jinja", "eval.jsonl", "stats.json", "train.jsonl"]
    assert json.loads((out2 / "stats.json").read_text()) == second
    entry = tmp_path / "cache" / second["cache_key"]
    assert os.stat(out2 / "train.jsonl").st_ino == os.stat(entry / "train.jsonl").st_ino  # hard-linked
    # a hit into a directory that holds another job's data replaces all of it, stale files included
    text = write_jsonl(tmp_path / "t.jsonl", [{"text": "x"}])
    cached(tmp_path, cfg(text), out="three")
    third, out3 = cached(tmp_path, c, out="three", model_path=model)
    assert third["cache"] == "hit" and (out3 / "eval.jsonl").read_bytes() == (out1 / "eval.jsonl").read_bytes()
    hit_text, _ = cached(tmp_path, cfg(text), out="three")
    assert hit_text["cache"] == "hit" and sorted(p.name for p in out3.iterdir()) == ["stats.json", "train.jsonl"]


CHANGES = {
    "data.system_prompt": (dict(), dict(system_prompt="Be terse.")),
    "data.eval_fraction": (dict(), dict(eval_fraction=0.5)),
    "data.max_rows": (dict(), dict(max_rows=3)),
    "data.on_bad_rows": (dict(), dict(on_bad_rows="skip")),
    "data.format": (dict(), dict(format="messages")),
    "data.chat_template": (dict(chat_template="chatml"), dict(chat_template="zephyr")),
    "train.max_length": (dict(), dict(max_length=64)),
    "train.seed": (dict(eval_fraction=0.5), dict(eval_fraction=0.5, seed=1)),
    "method.name": (dict(format="preference"), dict(format="preference", method="orpo")),
    "templated": (dict(), dict(templated=False)),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_cache_misses_when_one_input_changes(tmp_path, model, change):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD_PREF if "preference" in str(CHANGES[change]) else GOOD_MSG] * 4)
    before, after = CHANGES[change]
    args = {"method": "dpo" if "preference" in str(before) else "sft"}

    def run(opts, out):
        opts = dict(opts)
        kw = {k: opts.pop(k) for k in ("max_length", "seed", "method", "templated") if k in opts}
        return cached(tmp_path, cfg(path, **opts), out=out, model_path=model, **{**args, **kw})[0]

    a, b = run(before, "a"), run(after, "b")
    assert (a["cache"], b["cache"]) == ("miss", "miss") and a["cache_key"] != b["cache_key"]
    assert run(before, "c")["cache"] == run(after, "d")["cache"] == "hit"


def test_cache_misses_when_a_file_or_the_template_changes(tmp_path, model):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [U, {"role": "assistant", "content": "5"}]}])
    tmpl = tmp_path / "t.jinja"
    tmpl.write_text("{% for m in messages %}{{ m.content }}|{% endfor %}")
    c = cfg(path, chat_template=str(tmpl))
    first, _ = cached(tmp_path, c, out="a", model_path=model)
    # the same size, written at once (within one tick of the file system's clock): the bytes decide
    path.write_text(path.read_text().replace('"5"', '"6"'))
    second, out = cached(tmp_path, c, out="b", model_path=model)
    assert second["cache"] == "miss" and read(out / "train.jsonl")[0]["messages"][1]["content"] == "6"
    tmpl.write_text("{% for m in messages %}{{ m.content }}#{% endfor %}")  # same path, other template
    third, out = cached(tmp_path, c, out="c", model_path=model)
    assert third["cache"] == "miss" and "#" in (out / "chat_template.jinja").read_text()
    other_model = make_model_dir(tmp_path / "m2", chat_template=template.resolve("chatml", None),
                                 tokenizer=train_tokenizer(rows=50, vocab_size=400))
    fourth, _ = cached(tmp_path, c, out="d", model_path=other_model)
    assert fourth["cache"] == "miss" and fourth["tokenizer"] == str(other_model / "tokenizer.json")
    evals = write_jsonl(tmp_path / "e.jsonl", [GOOD_MSG])
    fifth, _ = cached(tmp_path, cfg(path, chat_template=str(tmpl), eval=str(evals)), out="e", model_path=model)
    assert fifth["cache"] == "miss" and len({first["cache_key"], second["cache_key"], third["cache_key"],
                                              fourth["cache_key"], fifth["cache_key"]}) == 5


def test_bad_rows_are_the_same_with_the_cache_and_not_cached(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD_MSG, '{"messages": [', {"messages": [U]}])
    c = cfg(path, chat_template="chatml")
    with pytest.raises(DataError) as plain:
        prep(tmp_path, c)
    for _ in range(2):
        with pytest.raises(DataError) as with_cache:
            cached(tmp_path, c)
        assert str(with_cache.value) == str(plain.value) and with_cache.value.problems == plain.value.problems
    assert entries(tmp_path / "cache") == []
    skipped, _ = cached(tmp_path, cfg(path, chat_template="chatml", on_bad_rows="skip"))
    again, _ = cached(tmp_path, cfg(path, chat_template="chatml", on_bad_rows="skip"), out="again")
    assert again["cache"] == "hit" and again["skipped"] == skipped["skipped"] and again["skipped"]["count"] == 2


def test_concurrent_prepares_of_the_same_data_both_succeed(tmp_path, model):
    import threading

    with open(GSM8K) as f:
        raw = [json.loads(line) for _, line in zip(range(300), f)]
    path = write_jsonl(tmp_path / "g.jsonl", raw)
    c = cfg(path, columns={"instruction": "question", "output": "answer"}, eval_fraction=0.1)
    n = 4
    barrier, results, errors = threading.Barrier(n), [None] * n, []

    def job(i):
        try:
            barrier.wait()
            results[i] = cached(tmp_path, c, out=f"out{i}", model_path=model)[0]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({r["cache_key"] for r in results}) == 1 and all(same_stats(results[0], r) for r in results)
    assert entries(tmp_path / "cache") == [results[0]["cache_key"]]  # one entry, no temporary left
    for i in range(1, n):
        for name in ("train.jsonl", "eval.jsonl", "chat_template.jinja"):
            assert (tmp_path / f"out{i}" / name).read_bytes() == (tmp_path / "out0" / name).read_bytes()


def test_losing_the_race_to_store_discards_the_copy(tmp_path):
    from core.data import cache as datacache

    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}])
    stats, out = cached(tmp_path, cfg(path))
    entry = tmp_path / "cache" / stats["cache_key"]
    assert datacache.store(tmp_path / "cache", stats["cache_key"], out, stats) is False  # already there
    other = "0" * 64
    (tmp_path / "cache" / other).mkdir()
    (tmp_path / "cache" / other / "stats.json").write_text("{}")  # a winner that renamed first
    real_is_dir = Path.is_dir
    with pytest.MonkeyPatch.context() as mp:  # the check before copying passes, the rename then fails
        mp.setattr(Path, "is_dir", lambda self: False if self.name == other else real_is_dir(self))
        assert datacache.store(tmp_path / "cache", other, out, stats) is False
    assert entries(tmp_path / "cache") == sorted([entry.name, other])


def test_a_damaged_entry_is_a_miss(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": f"row {i}"} for i in range(5)])
    first, out = cached(tmp_path, cfg(path))
    stored = tmp_path / "cache" / first["cache_key"] / "train.jsonl"
    stored.write_text('{"text": "tampered"}\n')  # e.g. a hard-linked copy edited in place
    second, out = cached(tmp_path, cfg(path), out="again")
    assert second["cache"] == "miss" and read(out / "train.jsonl") == [{"text": f"row {i}"} for i in range(5)]
    assert cached(tmp_path, cfg(path), out="third")[0]["cache"] == "hit"


def test_cache_off_and_default_place(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}])
    monkeypatch.setenv("ANYTUNE_DATA_CACHE", "0")
    stats, out = cached(tmp_path, cfg(path))
    assert stats["cache"] is None and stats["cache_key"] is None and entries(tmp_path / "cache") == []
    assert prep(tmp_path, cfg(path))[0]["cache"] is None  # no cache given: none used
    monkeypatch.setenv("ANYTUNE_HOME", str(tmp_path / "home"))
    assert data.cache_dir() == tmp_path / "home" / "cache" / "data"
    monkeypatch.delenv("ANYTUNE_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "xdg" / "anytune" / "cache" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.cache_dir() == Path("~/.cache/anytune/cache/data").expanduser()


def test_temporaries_of_dead_writers_are_swept(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}])
    dead, fresh = tmp_path / "cache" / ".0123456789abcdef-dead.tmp", tmp_path / "cache" / ".fedcba9876543210-live.tmp"
    for d in (dead, fresh):
        d.mkdir(parents=True)
    os.utime(dead, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    stats, _ = cached(tmp_path, cfg(path))
    assert entries(tmp_path / "cache") == sorted([fresh.name, stats["cache_key"]])
