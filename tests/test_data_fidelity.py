"""Every field of real data sets means what its authors meant: one small file per class, in the shape other
projects publish (OpenAI/Azure chat, Axolotl, LLaMA-Factory, TRL), rows written here. Each test asserts the
normalised record and the tokens that carry loss (core.lossmask with the tiny Llama's tokenizer), or the
refusal with its file and row."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from core import lossmask, runner
from core.config import asset, compose
from core import data as datalib
from core.data import formats
from core.errors import ConfigError, DataError, UnsupportedFeature
from core.plugins import registry
from core.schema import DataConfig

TINY = asset("tiny-llama")
TOOL_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\\nTools:\\n' }}{% for tool in tools %}{{ tool | tojson }}{{ '\\n' }}"
    "{% endfor %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] }}"
    "{% if message.get('tool_calls') %}{% for call in message['tool_calls'] %}"
    "{{ '<tool_call>' }}{{ {'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson }}"
    "{{ '</tool_call>' }}{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
"""ChatML that takes ``tools`` and ``tool_calls`` (as Qwen's and Hermes' templates do), for the tool-call tests."""


def write(path: Path, rows: list) -> Path:
    if path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def prepared(tmp_path: Path, path: Path, method: str = "sft", **data) -> tuple[dict, list[dict]]:
    cfg = OmegaConf.structured(DataConfig(train=str(path), **{"chat_template": "chatml", **data}))
    stats = datalib.prepare(cfg, method=method, model_path=TINY, out_dir=tmp_path / "out", max_length=1024, seed=0)
    return stats, [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]


def refused(tmp_path: Path, path: Path, method: str = "sft", **data) -> str:
    with pytest.raises(DataError) as err:
        prepared(tmp_path, path, method, **data)
    return str(err.value)


def trained_text(record: dict, template: str | None = None) -> list[str]:
    """The text of each run of tokens that carry loss, as TRL's worker tokenises the record."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TINY)
    if template:
        tok.chat_template = template
    row = lossmask.tokenize_records([record], tok, "messages", True, 2048)[0]
    runs, current = [], []
    for i, m in zip(row["input_ids"], row["completion_mask"]):
        if m:
            current.append(i)
        elif current:
            runs.append(tok.decode(current))
            current = []
    if current:
        runs.append(tok.decode(current))
    return runs


U1, A1 = "What is 2+3?", "2+3 is 5."
U2, A2 = "And 4+4?", "4+4 is 8."


# --------------------------------------------------------------------------- per-turn training flags


def test_openai_weight_zero_turn_carries_no_loss(tmp_path):
    """OpenAI/Azure chat fine-tuning: ``weight: 0`` on an assistant message; ``weight: 1`` trains it."""
    path = write(tmp_path / "openai.jsonl", [{"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": U1},
        {"role": "assistant", "content": A1, "weight": 0}, {"role": "user", "content": U2},
        {"role": "assistant", "content": A2, "weight": 1}]}])
    _, [rec] = prepared(tmp_path, path)
    assert rec["messages"][2] == {"role": "assistant", "content": A1, "weight": 0}
    assert rec["messages"][4] == {"role": "assistant", "content": A2}
    assert trained_text(rec) == [A2 + "<|im_end|>\n"]


def test_axolotl_per_message_train_flags_and_train_detail(tmp_path):
    """Axolotl's chat_template with message_field_training / message_field_training_detail (docs example shape):
    ``train: false`` masks a turn; ``train_detail`` offsets (end inclusive) mark the trained characters."""
    answer = "I'm doing very well, thank you!"
    path = write(tmp_path / "axolotl.jsonl", [{"conversations": [
        {"from": "system", "value": "You are an AI assistant.", "train": False},
        {"from": "human", "value": "Hello", "train": False},
        {"from": "assistant", "value": "Hello", "train": False},
        {"from": "human", "value": "How are you?"},
        {"from": "assistant", "value": answer, "train_detail": [
            {"begin_offset": 0, "end_offset": 8, "train": False}, {"begin_offset": 9, "end_offset": 18, "train": True},
            {"begin_offset": 19, "end_offset": 30, "train": False}]}]}])
    _, [rec] = prepared(tmp_path, path)
    assert rec["messages"][2] == {"role": "assistant", "content": "Hello", "weight": 0}
    assert rec["messages"][4] == {"role": "assistant", "content": answer, "train_spans": [[9, 19]]}
    # " very well" carries loss, then the turn's end (a part of it does)
    assert trained_text(rec) == [" very well", "<|im_end|>\n"]


def test_axolotl_train_true_on_a_user_turn_is_refused(tmp_path):
    path = write(tmp_path / "axolotl.jsonl", [{"conversations": [
        {"from": "human", "value": "How are you?", "train": True}, {"from": "gpt", "value": "Fine."}]}])
    assert (f"{path}:1: conversations turn 1 is a user turn marked for training; anytune trains on assistant "
            "turns only") in refused(tmp_path, path)


def test_axolotl_content_parts_with_train_flags(tmp_path):
    """Axolotl's content parts with per-part ``train``/``weight``: the reasoning part masked, the answer trained."""
    path = write(tmp_path / "parts.jsonl", [{"messages": [
        {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me think step by step...", "train": False},
                                          {"type": "text", "text": " The answer is 4.", "weight": 1}]}]}])
    _, [rec] = prepared(tmp_path, path)
    assert rec["messages"] == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "Let me think step by step... The answer is 4.", "train_spans": [[28, 45]]}]
    assert trained_text(rec) == [" The answer is 4.<|im_end|>\n"]


def test_llamafactory_v1_loss_weight_and_value_parts(tmp_path):
    """LLaMA-Factory's v1 format: ``loss_weight`` per message, content parts with ``value``."""
    path = write(tmp_path / "v1.jsonl", [{"messages": [
        {"role": "user", "content": [{"type": "text", "value": U1}], "loss_weight": 0.0},
        {"role": "assistant", "content": [{"type": "text", "value": A1}], "loss_weight": 0.0},
        {"role": "user", "content": [{"type": "text", "value": U2}], "loss_weight": 0.0},
        {"role": "assistant", "content": [{"type": "text", "value": A2}], "loss_weight": 1.0}]}])
    _, [rec] = prepared(tmp_path, path)
    assert rec["messages"][1] == {"role": "assistant", "content": A1, "weight": 0}
    assert trained_text(rec) == [A2 + "<|im_end|>\n"]


@pytest.mark.parametrize("turn, reason", [
    ({"role": "assistant", "content": A1, "weight": 0.5}, "messages turn 2 weight must be 0 or 1, got 0.5"),
    ({"role": "assistant", "content": A1, "weight": 0}, "no turn of messages carries loss"),
    ({"role": "assistant", "content": A1, "train": True, "weight": 0}, "contradictory training flags"),
    ({"role": "assistant", "content": A1, "train_detail": [{"begin_offset": 0, "end_offset": 40, "train": True}]},
     "offsets 0..40 lie outside its content (9 characters)"),
])
def test_bad_training_flags_are_refused(tmp_path, turn, reason):
    path = write(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": U1}, turn]}])
    assert f"{path}:1: " in (msg := refused(tmp_path, path)) and reason in msg


# --------------------------------------------------------------------------- unpaired preference (KTO)


def test_llamafactory_kto_rows_are_unpaired(tmp_path):
    """LLaMA-Factory's kto_en_demo shape: ``messages`` (content before role) and a boolean ``label``."""
    path = write(tmp_path / "kto.json", [
        {"messages": [{"content": U1, "role": "user"}, {"content": A1, "role": "assistant"}], "label": True},
        {"messages": [{"content": U1, "role": "user"}, {"content": "It is 6.", "role": "assistant"}], "label": False}])
    stats, recs = prepared(tmp_path, path, method="kto")
    assert stats["kind"] == "unpaired" and stats["report"]["row_kinds"]["train"] == {"desirable": 1, "undesirable": 1}
    assert recs == [{"prompt": [{"role": "user", "content": U1}], "completion": [{"role": "assistant", "content": A1}],
                     "label": True},
                    {"prompt": [{"role": "user", "content": U1}],
                     "completion": [{"role": "assistant", "content": "It is 6."}], "label": False}]


def test_trl_unpaired_preference_rows(tmp_path):
    """TRL's unpaired preference format, standard and conversational."""
    path = write(tmp_path / "kto.jsonl", [
        {"prompt": U1, "completion": A1, "label": True},
        {"prompt": [{"role": "user", "content": U1}], "completion": [{"role": "assistant", "content": "6"}],
         "label": False}])
    _, recs = prepared(tmp_path, path, method="kto")
    assert [r["label"] for r in recs] == [True, False] and recs[1]["completion"][0]["content"] == "6"
    assert recs[0]["prompt"] == [{"role": "user", "content": U1}]


def test_kto_data_is_not_sft_data_and_kto_runs_only_where_an_engine_has_it(tmp_path):
    path = write(tmp_path / "kto.jsonl", [{"prompt": U1, "completion": A1, "label": True}] * 4)
    with pytest.raises(ConfigError, match="method.name=sft needs messages, prompt_completion or text data; .* is "
                                          r"unpaired \(prompt/completion with a boolean label, KTO\); use method.name=kto"):
        prepared(tmp_path, path)
    cfg = compose(["backend=torchtune", "method=kto", f"data.train={path}", "offline=true", "train.shuffle=false"])
    with pytest.raises(UnsupportedFeature, match="backend 'torchtune' does not support method.name=kto; backends "
                                                 "that support it: trl"):
        runner.check(cfg, registry())
    with pytest.raises(ConfigError, match="set train.shuffle=false"):
        runner.check(compose(["method=kto", f"data.train={path}", "offline=true"]), registry())
    runner.check(compose(["method=kto", f"data.train={path}", "offline=true", "train.shuffle=false"]), registry())


def test_a_non_boolean_label_is_not_kto(tmp_path):
    """A classification label beside a conversation is an ordinary column, not feedback."""
    path = write(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": U1},
                                                      {"role": "assistant", "content": A1}], "label": "math"}])
    assert formats.detect(json.loads(path.read_text()), {}) == "messages"


# --------------------------------------------------------------------------- multimodal rows


def test_llamafactory_image_rows_are_refused(tmp_path):
    """LLaMA-Factory's mllm_demo shape: an ``images`` column and ``<image>`` placeholders."""
    path = write(tmp_path / "mllm.json", [
        {"messages": [{"content": "<image>Who are they?", "role": "user"},
                      {"content": "Two players.", "role": "assistant"}], "images": ["a.jpg"]},
        {"messages": [{"content": "Who is <image> here?", "role": "user"}, {"content": "A player.", "role": "assistant"}]}])
    msg = refused(tmp_path, path)
    assert f"{path}:row 1: column 'images' holds media (1 item(s)): multimodal rows" in msg
    assert f"{path}:row 2: messages turn 1 content holds an <image> placeholder: multimodal data" in msg


def test_openai_image_part_is_refused_by_type(tmp_path):
    path = write(tmp_path / "vision.jsonl", [{"messages": [
        {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
        {"role": "assistant", "content": "A cat."}]}])
    assert (f"{path}:1: messages turn 1 content part 2 is of type 'image_url'; only text parts are supported"
            in refused(tmp_path, path))


def test_reasoning_parts_and_fields_are_refused(tmp_path):
    """LLaMA-Factory v1 ``reasoning`` parts and a separate ``reasoning_content`` would be dropped: refused."""
    path = write(tmp_path / "r.jsonl", [
        {"messages": [{"role": "user", "content": [{"type": "text", "value": U1}]},
                      {"role": "assistant", "content": [{"type": "reasoning", "value": "hmm"},
                                                        {"type": "text", "value": A1}]}]},
        {"messages": [{"role": "user", "content": U1},
                      {"role": "assistant", "content": A1, "reasoning_content": "hmm"}]}])
    msg = refused(tmp_path, path)
    assert f"{path}:1: messages turn 2 content part 1 is of type 'reasoning'" in msg
    assert f"{path}:2: messages turn 2 has reasoning_content" in msg


# --------------------------------------------------------------------------- column mapping, file shape


def test_a_mapped_column_is_not_read_again_under_its_own_name(tmp_path):
    path = write(tmp_path / "io.jsonl", [{"input": U1, "output": A1}])
    _, [rec] = prepared(tmp_path, path, columns={"instruction": "input"})
    assert rec == {"messages": [{"role": "user", "content": U1}, {"role": "assistant", "content": A1}]}


def test_a_json_file_holding_one_object_says_so(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": U1}]}, indent=2))
    with pytest.raises(ConfigError, match=r"has no readable row; line 1: the file is one JSON object; a \.json "
                                          "file must hold a list of objects or one object per line"):
        prepared(tmp_path, path)


# --------------------------------------------------------------------------- preference shapes


def test_llamafactory_sharegpt_dpo_rows_are_preference_data(tmp_path):
    """LLaMA-Factory's dpo_en_demo shape: ``conversations`` plus ``chosen``/``rejected`` as ``{from, value}``."""
    path = write(tmp_path / "dpo.json", [{"conversations": [{"from": "system", "value": "Be brief."},
                                                            {"from": "human", "value": U1}],
                                          "chosen": {"from": "gpt", "value": "5"},
                                          "rejected": {"from": "gpt", "value": "6"}}])
    stats, [rec] = prepared(tmp_path, path, method="dpo")
    assert stats["kind"] == "preference" and stats["format"]["train"] == "preference"
    assert rec == {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": U1}],
                   "chosen": [{"role": "assistant", "content": "5"}],
                   "rejected": [{"role": "assistant", "content": "6"}]}


def test_llamafactory_alpaca_ranking_rows_are_preference_data(tmp_path):
    path = write(tmp_path / "rank.json", [{"instruction": "Add.", "input": "2+3", "chosen": "5", "rejected": "6"}])
    _, [rec] = prepared(tmp_path, path, method="dpo")
    assert rec["prompt"] == [{"role": "user", "content": "Add.\n\n2+3"}] and rec["chosen"][0]["content"] == "5"


def test_llamafactory_v1_dpo_whole_dialogues(tmp_path):
    """LLaMA-Factory's v1 DPO: ``chosen_messages``/``rejected_messages`` whole dialogues, value parts."""
    def dialogue(answer):
        return [{"role": "user", "content": [{"type": "text", "value": U1}], "loss_weight": 0.0},
                {"role": "assistant", "content": [{"type": "text", "value": answer}]}]
    path = write(tmp_path / "v1.jsonl", [{"chosen_messages": dialogue("5"), "rejected_messages": dialogue("6")}])
    _, [rec] = prepared(tmp_path, path, method="dpo")
    assert rec == {"prompt": [{"role": "user", "content": U1}], "chosen": [{"role": "assistant", "content": "5"}],
                   "rejected": [{"role": "assistant", "content": "6"}]}


def test_training_flags_in_preference_data_are_refused(tmp_path):
    path = write(tmp_path / "p.jsonl", [{"prompt": [{"role": "user", "content": U1}],
                                         "chosen": [{"role": "assistant", "content": "5", "weight": 0}],
                                         "rejected": [{"role": "assistant", "content": "6"}]}])
    assert f"{path}:1: chosen turn 1 has a training flag" in refused(tmp_path, path, method="dpo")


# --------------------------------------------------------------------------- text parts


def test_text_parts_are_joined_with_any_text_key(tmp_path):
    path = write(tmp_path / "parts.jsonl", [{"messages": [
        {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "value": "2+3?"}]},
        {"role": "assistant", "content": [{"type": "text", "content": "2+3 is 5."}]}]}])
    _, [rec] = prepared(tmp_path, path)
    assert rec == {"messages": [{"role": "user", "content": U1}, {"role": "assistant", "content": A1}]}
    assert trained_text(rec) == [A1 + "<|im_end|>\n"]


# --------------------------------------------------------------------------- tool calls

OPENAI_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                                  "parameters": {"type": "object",
                                                                 "properties": {"city": {"type": "string"}}}}}]


def openai_tool_row() -> dict:
    return {"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
        {"role": "assistant", "content": "It is 18C and sunny."}], "tools": OPENAI_TOOLS}


def test_openai_tool_calls_are_carried_and_rendered(tmp_path):
    tmpl = tmp_path / "tools.jinja"
    tmpl.write_text(TOOL_TEMPLATE)
    path = write(tmp_path / "tools.jsonl", [openai_tool_row()])
    stats, [rec] = prepared(tmp_path, path, chat_template=str(tmpl))
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    assert rec == {"messages": [
        {"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "18C, sunny", "tool_call_id": "call_1"},
        {"role": "assistant", "content": "It is 18C and sunny."}], "tools": OPENAI_TOOLS}
    assert stats["report"]["row_kinds"]["train"] == {"tool_calls": 1}
    # the call and the answer carry loss; the tool's result does not
    assert trained_text(rec, TOOL_TEMPLATE) == [
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>\n',
        "It is 18C and sunny.<|im_end|>\n"]


def test_tool_calls_with_a_template_that_drops_them_are_refused(tmp_path):
    path = write(tmp_path / "tools.jsonl", [openai_tool_row()])
    assert (f"{path}:1: the chat template of record does not render tools or tool calls (it dropped the tool call "
            "'get_weather')") in refused(tmp_path, path)  # ChatML renders neither


def test_llamafactory_function_call_and_observation_turns(tmp_path):
    """LLaMA-Factory's glaive_toolcall shape: function_call/observation turns, ``tools`` as JSON text."""
    tmpl = tmp_path / "tools.jinja"
    tmpl.write_text(TOOL_TEMPLATE)
    tools = [{"name": "search_recipes", "description": "Search recipes",
              "parameters": {"type": "object", "properties": {"ingredients": {"type": "array"}}}}]
    path = write(tmp_path / "glaive.json", [{"conversations": [
        {"from": "human", "value": "I have chicken and rice."},
        {"from": "function_call", "value": json.dumps({"name": "search_recipes",
                                                       "arguments": {"ingredients": ["chicken", "rice"]}})},
        {"from": "observation", "value": "{\"recipes\": [\"Stir fry\"]}"},
        {"from": "gpt", "value": "Try a stir fry."}], "tools": json.dumps(tools)}])
    _, [rec] = prepared(tmp_path, path, chat_template=str(tmpl))
    assert rec["tools"] == tools
    assert rec["messages"][1] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "search_recipes", "arguments": {"ingredients": ["chicken", "rice"]}}}]}
    assert rec["messages"][2] == {"role": "tool", "content": "{\"recipes\": [\"Stir fry\"]}"}


def test_tool_turn_out_of_place_is_refused(tmp_path):
    path = write(tmp_path / "t.jsonl", [{"messages": [{"role": "user", "content": U1},
                                                      {"role": "tool", "content": "5"},
                                                      {"role": "assistant", "content": A1}]}])
    assert (f"{path}:1: misordered turns in messages: tool turn 2 does not follow an assistant turn with tool calls"
            in refused(tmp_path, path))


# --------------------------------------------------------------------------- prompt/completion as messages


def test_trl_conversational_prompt_completion(tmp_path):
    """TRL's conversational prompt/completion: only the completion carries loss, not the prompt's own answers."""
    path = write(tmp_path / "pc.jsonl", [{
        "prompt": [{"role": "user", "content": U1}, {"role": "assistant", "content": A1},
                   {"role": "user", "content": U2}],
        "completion": [{"role": "assistant", "content": A2}]}])
    stats, [rec] = prepared(tmp_path, path)
    assert stats["kind"] == "messages"
    assert rec == {"messages": [{"role": "user", "content": U1}, {"role": "assistant", "content": A1, "weight": 0},
                                {"role": "user", "content": U2}, {"role": "assistant", "content": A2}]}
    assert trained_text(rec) == [A2 + "<|im_end|>\n"]


# --------------------------------------------------------------------------- LLaMA-Factory alpaca columns


def test_llamafactory_alpaca_system_and_history(tmp_path):
    path = write(tmp_path / "alpaca.json", [{"instruction": U2, "input": "", "output": A2, "system": "Be brief.",
                                             "history": [[U1, A1]]}])
    _, [rec] = prepared(tmp_path, path)
    assert rec == {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": U1},
                                {"role": "assistant", "content": A1}, {"role": "user", "content": U2},
                                {"role": "assistant", "content": A2}]}


# --------------------------------------------------------------------------- more published shapes


def test_openai_preference_fine_tuning_rows(tmp_path):
    """OpenAI's preference (DPO) fine-tuning format: input.messages, preferred_output, non_preferred_output."""
    path = write(tmp_path / "openai_dpo.jsonl", [{
        "input": {"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": U1}]},
        "preferred_output": [{"role": "assistant", "content": "5"}],
        "non_preferred_output": [{"role": "assistant", "content": "6"}]}])
    _, [rec] = prepared(tmp_path, path, method="dpo")
    assert rec == {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": U1}],
                   "chosen": [{"role": "assistant", "content": "5"}],
                   "rejected": [{"role": "assistant", "content": "6"}]}


@pytest.mark.parametrize("row", [
    {"system": "Be brief.", "prompt": U1, "chosen": "5", "rejected": "6"},                     # chatml.prompt_pairs
    {"system": "Be brief.", "question": U1, "chosen": "5", "rejected": "6"},                   # chatml.intel
    {"system": "Be brief.", "instruction": U1, "chosen_response": "5", "rejected_response": "6"},  # llama3.icr
    {"system": "Be brief.", "input": U1, "chosen": "5", "rejected": "6"},                      # chatml.argilla
    {"system": "Be brief.", "prompt": U1,                                                     # chat_template.argilla
     "chosen": [{"role": "user", "content": U1}, {"role": "assistant", "content": "5"}],
     "rejected": [{"role": "user", "content": U1}, {"role": "assistant", "content": "6"}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": U1}],  # chat_template DPO
     "chosen": {"role": "assistant", "content": "5"}, "rejected": {"role": "assistant", "content": "6"}},
], ids=["prompt_pairs", "intel", "icr", "argilla", "argilla_chat", "chat_template"])
def test_axolotl_dpo_shapes_keep_their_system_prompt(tmp_path, row):
    """Axolotl's DPO dataset types (docs/rlhf.qmd): every one keeps its system prompt and its prompt."""
    path = write(tmp_path / "dpo.jsonl", [row])
    _, [rec] = prepared(tmp_path, path, method="dpo")
    assert rec == {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": U1}],
                   "chosen": [{"role": "assistant", "content": "5"}],
                   "rejected": [{"role": "assistant", "content": "6"}]}


def test_a_prompt_field_that_contradicts_the_dialogues_is_refused(tmp_path):
    path = write(tmp_path / "dpo.jsonl", [{"prompt": "Something else?",
                                           "chosen": [{"role": "user", "content": U1}, {"role": "assistant", "content": "5"}],
                                           "rejected": [{"role": "user", "content": U1}, {"role": "assistant", "content": "6"}]}])
    assert f"{path}:1: the prompt field differs from the turns chosen and rejected share" in refused(tmp_path, path, "dpo")


def test_axolotl_kto_rows_with_system_and_instruction(tmp_path):
    path = write(tmp_path / "kto.jsonl", [{"system": "Be brief.", "instruction": U1, "completion": "5", "label": True}])
    _, [rec] = prepared(tmp_path, path, method="kto")
    assert rec == {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": U1}],
                   "completion": [{"role": "assistant", "content": "5"}], "label": True}


def test_a_system_column_beside_plain_prompt_completion_is_refused(tmp_path):
    """Plain prompt/completion is trained without a template: a system column would be dropped."""
    path = write(tmp_path / "pc.jsonl", [{"system": "Be brief.", "prompt": "2+3=", "completion": "5"}])
    assert f"{path}:1: the row has a system column, which plain prompt/completion rows cannot carry" in refused(
        tmp_path, path)


def test_openai_legacy_function_calling_rows(tmp_path):
    """OpenAI's legacy function-calling fine-tuning format: ``functions``, ``function_call``, role ``function``."""
    tmpl = tmp_path / "tools.jinja"
    tmpl.write_text(TOOL_TEMPLATE)
    functions = [{"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    path = write(tmp_path / "fn.jsonl", [{"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "function_call": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
        {"role": "function", "name": "get_weather", "content": "18C"},
        {"role": "assistant", "content": "It is 18C."}], "functions": functions}])
    _, [rec] = prepared(tmp_path, path, chat_template=str(tmpl))
    assert rec["tools"] == functions
    assert rec["messages"][1] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    assert rec["messages"][2] == {"role": "tool", "content": "18C", "name": "get_weather"}


def test_data_report_counts_duplicates_leaks_and_empty_answers(tmp_path):
    row = {"messages": [{"role": "user", "content": U1}, {"role": "assistant", "content": A1}]}
    flagged = {"messages": [{"role": "user", "content": U1}, {"role": "assistant", "content": A1, "weight": 0},
                            {"role": "user", "content": U2}, {"role": "assistant", "content": A2}]}
    empty = {"messages": [{"role": "user", "content": U1}, {"role": "assistant", "content": " "}]}
    no_question = {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": A1}]}
    path = write(tmp_path / "d.jsonl", [row, row, flagged, empty, no_question])
    held = write(tmp_path / "e.jsonl", [row, flagged, {"messages": [{"role": "user", "content": U2},
                                                                    {"role": "assistant", "content": A2}]}])
    stats, _ = prepared(tmp_path, path, on_bad_rows="skip", eval=str(held))
    assert stats["report"] == {"row_kinds": {"train": {"plain": 2, "turn_weights": 1},
                                             "eval": {"plain": 2, "turn_weights": 1}},
                               "duplicates": {"train": 1, "eval": 0}, "eval_in_train": 2, "empty_responses": 1}
    tokens = stats["tokens"]["train"]
    assert tokens["p50"] <= tokens["p90"] <= tokens["p99"] == tokens["max"]


def test_llamafactory_messages_column_with_system_and_tool_roles(tmp_path):
    """LLaMA-Factory's sharegpt formatting over a role/content ``messages`` column: a ``system`` column and the
    function_call/observation roles are kept, not dropped."""
    tmpl = tmp_path / "tools.jinja"
    tmpl.write_text(TOOL_TEMPLATE)
    path = write(tmp_path / "lf.json", [{"system": "Be brief.", "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "function_call", "content": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
        {"role": "observation", "content": "18C"}, {"role": "assistant", "content": "It is 18C."}]}])
    _, [rec] = prepared(tmp_path, path, chat_template=str(tmpl))
    assert rec["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18C"}, {"role": "assistant", "content": "It is 18C."}]
