"""The chat template of record: resolution, and rendering byte-identical to transformers."""
from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest

from core.data import chat_template as template
from core.errors import ConfigError

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"
SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|user|>", "<|assistant|>", "<|system|>"]

# A model's own template that uses what transformers' sandbox offers: whitespace control,
# namespace, loop controls, tojson on non-ASCII, raise_exception, {% generation %}, tools/bos_token.
GNARLY = """{{- bos_token }}
{%- set ns = namespace(n=0) %}
{%- if tools is not none %}{{ raise_exception('no tools') }}{% endif %}
{%- for message in messages %}
    {%- if message['role'] == 'system' and not loop.first %}{{ raise_exception('System must come first') }}{% endif %}
    {%- if message['content'] == 'SKIP' %}{% continue %}{% endif %}
    {%- set ns.n = ns.n + 1 %}
    <{{ message['role'] }} n={{ ns.n }}>
    {%- if message['role'] == 'assistant' %}
        {% generation %}{{ message['content'] | trim }}{{ eos_token }}{% endgeneration %}
    {%- else %}
        {{ message['content'] | tojson }}
    {%- endif %}
    {%- if message['content'] == 'STOP' %}{% break %}{% endif %}
{% endfor %}
{%- if add_generation_prompt %}<assistant>{% endif %}"""

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": "5"}],
    [{"role": "system", "content": "Be brief. Ünïcode ✓ \"quotes\" <tags> & amp"},
     {"role": "user", "content": "  leading and trailing spaces  \n"},
     {"role": "assistant", "content": "\nFirst.\n\n"},
     {"role": "user", "content": "SKIP"},
     {"role": "assistant", "content": "Second {{ not a template }} {% raw %}"}],
    [{"role": "user", "content": "STOP"}, {"role": "assistant", "content": "never rendered by GNARLY"}],
]


def train_tokenizer(rows: int = 200, vocab_size: int = 800):
    """A small byte-level BPE tokenizer trained on GSM8K rows, with chat special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = []
    with open(GSM8K) as f:
        for _, line in zip(range(rows), f):
            r = json.loads(line)
            texts += [r["question"], r["answer"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


def make_model_dir(path: Path, chat_template: str | list | None = None, jinja_file: str | None = None,
                   bos="<s>", eos="</s>", tokenizer=None) -> Path:
    """A model directory holding only a tokenizer: tokenizer.json + tokenizer_config.json (+ chat_template.jinja)."""
    path.mkdir(parents=True, exist_ok=True)
    (tokenizer or train_tokenizer()).save(str(path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096,
              "bos_token": bos, "eos_token": {"content": eos, "special": True, "__type": "AddedToken"}}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    if jinja_file is not None:
        (path / "chat_template.jinja").write_text(jinja_file)
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


def hf_render(model_dir: Path, tmpl: str, messages, add_generation_prompt: bool) -> str:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.chat_template = tmpl
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


@pytest.mark.parametrize("name", template.BUILTIN)
@pytest.mark.parametrize("gen", [False, True])
def test_builtin_renders_like_transformers(tmp_path, tokenizer, name, gen):
    model = make_model_dir(tmp_path / "m", tokenizer=tokenizer)
    tmpl = template.resolve(name, None)
    assert tmpl == (template.TEMPLATES_DIR / f"{name}.jinja").read_text()
    for conv in CONVERSATIONS:
        ours = template.render(tmpl, conv, gen, template.special_tokens(str(model)))
        assert ours == hf_render(model, tmpl, conv, gen)


def test_builtins_are_the_known_templates():
    """Spot checks of the well-known layouts (so an edited asset cannot pass parity alone)."""
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
    sp = {"bos_token": "<s>", "eos_token": "</s>"}
    assert template.render(template.resolve("chatml", None), msgs, True, sp) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert template.render(template.resolve("llama3", None), msgs, False, sp) == (
        "<s><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "U<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nA<|eot_id|>")
    assert template.render(template.resolve("zephyr", None), msgs, True, sp) == (
        "<|system|>\nS</s>\n<|user|>\nU</s>\n<|assistant|>\nA</s>\n<|assistant|>\n")


@pytest.mark.parametrize("gen", [False, True])
def test_model_template_renders_like_transformers(tmp_path, tokenizer, gen):
    model = make_model_dir(tmp_path / "m", chat_template=GNARLY, tokenizer=tokenizer)
    tmpl = template.resolve(None, str(model))
    assert tmpl == GNARLY
    specials = template.special_tokens(str(model))
    assert specials == {"bos_token": "<s>", "eos_token": "</s>"}
    for conv in CONVERSATIONS:
        ours = template.render(tmpl, conv, gen, specials)
        assert ours == hf_render(model, tmpl, conv, gen)
    assert "never rendered" not in template.render(tmpl, CONVERSATIONS[2], gen, specials)  # {% break %}
    assert '"Be brief. Ünïcode ✓ \\"quotes\\" <tags> & amp"' in template.render(tmpl, CONVERSATIONS[1], gen, specials)


def test_raise_exception_is_a_template_error(tmp_path):
    bad = [{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}]
    with pytest.raises(jinja2.TemplateError, match="System must come first"):
        template.render(GNARLY, bad, False, {})


def test_strftime_now_and_no_special_tokens():
    tmpl = "{{ strftime_now('%Y') }}|{{ bos_token }}|{% for m in messages %}{{ m.content }}{% endfor %}"
    from datetime import datetime

    assert template.render(tmpl, [{"role": "user", "content": "x"}]) == f"{datetime.now():%Y}||x"


def test_chat_template_file_wins_over_tokenizer_config(tmp_path, tokenizer):
    model = make_model_dir(tmp_path / "m", chat_template="CONFIG", jinja_file="FILE {{ messages|length }}",
                           tokenizer=tokenizer)
    text, source = template.resolve_with_source(None, str(model))
    assert text == "FILE {{ messages|length }}" and source.endswith("chat_template.jinja")
    conv = CONVERSATIONS[0]
    assert template.render(text, conv) == hf_render(model, text, conv, False) == "FILE 2"
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(model)).chat_template == text  # transformers agrees on precedence


def test_named_templates_in_tokenizer_config(tmp_path, tokenizer):
    model = make_model_dir(tmp_path / "m", tokenizer=tokenizer, chat_template=[
        {"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "DEFAULT"}])
    assert template.resolve(None, str(model)) == "DEFAULT"


def test_resolve_paths_inline_and_missing(tmp_path, tokenizer):
    f = tmp_path / "mine.jinja"
    f.write_text("{% for m in messages %}[{{ m.role }}]{% endfor %}")
    assert template.resolve(str(f), None) == f.read_text()
    assert template.resolve("{{ messages[0].content }}", None) == "{{ messages[0].content }}"
    assert template.resolve(None, None) is None
    no_template = make_model_dir(tmp_path / "bare", tokenizer=tokenizer)
    assert template.resolve(None, str(no_template)) is None
    # an explicit choice wins over the model's own
    model = make_model_dir(tmp_path / "m", chat_template="MODEL", tokenizer=tokenizer)
    assert template.resolve("chatml", str(model)).startswith("{% for message in messages %}")
    with pytest.raises(ConfigError, match=r"chatmel.*did you mean 'chatml'.*chatml, llama3, zephyr"):
        template.resolve("chatmel", None)
    with pytest.raises(ConfigError, match="nor an existing .jinja file"):
        template.resolve(str(tmp_path / "absent.jinja"), None)


def test_syntax_error_is_a_config_error():
    with pytest.raises(ConfigError, match="does not compile"):
        template.compile_template("{% for m in messages %}")


def test_sandbox_refuses_internals():
    with pytest.raises(jinja2.exceptions.SecurityError):
        template.render("{{ messages.__class__.__mro__ }}", [{"role": "user", "content": "x"}])
    with pytest.raises(jinja2.exceptions.SecurityError):
        template.render("{% set ns = namespace(_x=1) %}", [])
