"""export=[ollama]: the chat template of record as an Ollama (Go text/template) TEMPLATE, checked by rendering.

No Go toolchain here: ``plugins/ollama/gotemplate.render`` interprets Go's template syntax (the subset chat
templates use). It is first held to Go's documented semantics on templates written by hand (Ollama's own ChatML
template from its library, trim markers, else-if chains, variables, slice/len), then used to show that the
derived template renders, on sample conversations, exactly what the Jinja template renders. All fast.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import chatrender, runner
from core.conformance import SMALL, compose
from plugins.ollama import gotemplate
from plugins.ollama.worker import modelfile

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = {p.stem: p.read_text() for p in sorted((ROOT / "core/assets/templates").glob("*.jinja"))}
TEMPLATES["tiny"] = (ROOT / "core/assets/tiny-llama/chat_template.jinja").read_text()
SPECIALS = {"chatml": {"eos_token": "<|im_end|>"}, "tiny": {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>"},
            "llama3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
            "zephyr": {"bos_token": "<s>", "eos_token": "</s>"}}
OLLAMA_CHATML = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|im_start|>{{ .Role }}
{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_end|>
<|im_start|>assistant
{{ end }}
{{- end }}"""
"""A ChatML template in Ollama's library style: literal text, trim markers on both sides, $last."""
CHAT = [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"}]


def jinja(name: str):
    compiled = chatrender.environment().from_string(TEMPLATES[name])
    return lambda messages, gen: chatrender.render(compiled, messages, gen, SPECIALS[name])


# -- the renderer holds Go's semantics --------------------------------------------------------------------------


def test_renderer_on_ollamas_chatml_template():
    assert gotemplate.render(OLLAMA_CHATML, CHAT) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\n")
    # a conversation ending with the assistant stays open (Ollama continues that turn)
    assert gotemplate.render(OLLAMA_CHATML, CHAT[:3]).endswith("<|im_start|>assistant\nA1")


@pytest.mark.parametrize("template, want", [
    ("a  {{- \"b\" -}}  c", "abc"),                      # trim markers eat the whitespace beside them only
    ("a \n{{ \"b\" }}\n c", "a \nb\n c"),               # no markers: nothing trimmed
    ("{{ if eq .System \"\" }}none{{ else if eq .System \"x\" }}x{{ else }}other{{ end }}", "none"),
    ("{{ range .Messages }}[{{ .Role }}]{{ end }}", "[system][user][assistant][user]"),
    ("{{ range $i, $m := .Messages }}{{ $i }}{{ $m.Role }} {{ end }}", "0system 1user 2assistant 3user "),
    ("{{ len .Messages }} {{ len (slice .Messages 1) }} {{ .Prompt }}", "4 3 U2"),
    ("{{ $x := \"a\" }}{{ if true }}{{ $x = \"b\" }}{{ end }}{{ $x }}", "b"),
    ("{{ \"{{\" }} \"q\" \\n", "{{ \"q\" \\n"),
    ("{{ and 1 0 }} {{ or 0 \"\" 2 }} {{ not .System }}", "0 2 true"),
])
def test_renderer_semantics(template, want):
    assert gotemplate.render(template, CHAT) == want


@pytest.mark.parametrize("template", ["{{ if .System }}x", "{{ end }}", "{{ with .System }}{{ . }}{{ end }}",
                                      "{{ index .Messages 0 }}"])
def test_renderer_refuses_what_it_does_not_know(template):
    with pytest.raises(gotemplate.GoTemplateError):
        gotemplate.render(template, CHAT)


# -- the derived template renders what the Jinja template renders -----------------------------------------------


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_derived_template_renders_as_jinja(name):
    blocks = gotemplate.derive(jinja(name), SPECIALS[name].get("bos_token"))
    go = gotemplate.go_template(blocks)
    assert gotemplate.check(go, jinja(name), blocks.dropped_head) == []
    for msgs in gotemplate.SAMPLES:  # the same, spelled out
        want = jinja(name)(msgs, True)
        assert gotemplate.render(go, msgs) == want[len(blocks.dropped_head):]
        assert want.startswith(blocks.dropped_head)
    assert blocks.dropped_head == ("<|begin_of_text|>" if name == "llama3" else "")  # llama.cpp adds BOS itself
    assert ("trims" in " ".join(blocks.notes)) == (name == "llama3")  # llama3's template trims content


def test_check_catches_a_template_that_differs():
    blocks = gotemplate.derive(jinja("chatml"))
    go = gotemplate.go_template(blocks).replace("<|im_end|>\\n", "<|im_end|>", 1)  # the system turn's newline
    problems = gotemplate.check(go, jinja("chatml"))
    assert len(problems) == 2 and all(p.startswith(("sample 2", "sample 4")) for p in problems), problems
    assert gotemplate.check(OLLAMA_CHATML, jinja("chatml")) == []  # Ollama's own ChatML template is equivalent


@pytest.mark.parametrize("template, words", [
    ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are helpful.<|im_end|>\n{% endif %}"
     "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
     "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", "default system prompt"),
    ("{% for m in messages %}{% if loop.index0 == 2 %}<{{ m['content'] }}>{% else %}[{{ m['content'] }}]"
     "{% endif %}{% endfor %}", "first user turn"),
    ("{{ raise_exception('no') }}", "refused a probe"),
])
def test_templates_it_cannot_express(template, words):
    compiled = chatrender.environment().from_string(template)
    with pytest.raises(gotemplate.CannotExpress, match=words):
        gotemplate.derive(lambda m, g: chatrender.render(compiled, m, g, {}))


def test_modelfile():
    blocks = gotemplate.derive(jinja("tiny"), "<|endoftext|>")
    spec = {"gguf": "artifacts/gguf/model-f16.gguf", "template": gotemplate.go_template(blocks),
            "stops": gotemplate.stops(blocks, "<|im_end|>"), "system": "Be brief."}
    text = modelfile(spec)
    assert text.startswith("FROM ./model-f16.gguf\n")
    assert f'TEMPLATE """{spec["template"]}"""' in text and 'SYSTEM """Be brief."""' in text
    assert text.count("PARAMETER stop") == 1 and 'PARAMETER stop "<|im_end|>"' in text


# -- the step: refused or planned before training -----------------------------------------------------------------


def job(*overrides):
    keys = {o.split("=", 1)[0] for o in overrides}
    return compose([o for o in SMALL if o.split("=", 1)[0] not in keys] + list(overrides))


@pytest.mark.parametrize("overrides, words", [
    (["export=[ollama]"], "export=[gguf,ollama]"),
    (["export=[ollama,gguf]"], "list gguf first"),
    (["export=[gguf,ollama]", "export.ollama.template=/nonexistent.tmpl"], "no such file"),
    (["export=[gguf,ollama]", "data.chat_template=" + str(ROOT / "tests/x.jinja")], "data.chat_template"),
], ids=["no-gguf", "order", "template-file", "bad-template"])
def test_refused_before_training(tmp_path, overrides, words):
    bad = ROOT / "tests/x.jinja"
    result = runner.run(job(*overrides), tmp_path)
    assert result["status"] == "failed" and words in result["error"], result.get("error")
    assert not (tmp_path / "metrics.jsonl").exists() and not bad.exists()


def test_plan_writes_the_checked_template(tmp_path):
    result = runner.run(job("plan_only=true", "export=[gguf,ollama]", "export.ollama.system=Be brief."), tmp_path)
    assert result["status"] == "planned", result.get("error")
    spec = json.loads((tmp_path / "plan/export-ollama/ollama.json").read_text())
    assert spec["gguf"] == "artifacts/gguf/model-f16.gguf" and spec["modelfile"] == "artifacts/gguf/Modelfile"
    assert spec["stops"] == ["<|im_end|>"] and spec["system"] == "Be brief."
    template = (tmp_path / "data/chat_template.jinja").read_text()
    compiled = chatrender.environment().from_string(template)
    render = lambda m, g: chatrender.render(compiled, m, g, SPECIALS["tiny"])  # noqa: E731
    assert gotemplate.check(spec["template"], render) == []
