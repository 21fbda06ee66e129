"""The chat template of record: which Jinja template turns a conversation into text, and rendering it.

Every engine renders conversations with the one template the core resolves
here and writes to ``data/chat_template.jinja``, so all engines train on the
same text. :func:`render` reproduces ``transformers``' ``apply_chat_template(...,
tokenize=False)`` byte for byte (same sandbox, options and globals) without
importing transformers.
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from core.errors import ConfigError, did_you_mean

TEMPLATES_DIR = Path(__file__).parent / "assets" / "templates"
#: Built-in templates (``data.chat_template=<name>``), copied from the Hugging Face models that made them known.
BUILTIN = ("chatml", "llama3", "zephyr")
#: The named special tokens transformers passes to every chat template.
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def resolve(chat_template: str | None, model_path: str | None) -> str | None:
    """The template text of record, or None if there is none.

    :param chat_template: ``data.chat_template``: a built-in name (chatml, llama3, zephyr), a path to a
        ``.jinja`` file, a literal template (it contains ``{%`` or ``{{``), or null for the model's own.
    :param model_path: local model directory, or None when the model is not on disk.
    :raises ConfigError: a name that is neither a built-in nor an existing file.
    """
    return resolve_with_source(chat_template, model_path)[0]


def resolve_with_source(chat_template: str | None, model_path: str | None) -> tuple[str | None, str | None]:
    """Like :func:`resolve`, and where the template came from (a name, a path, ``model:<file>``, ``inline``)."""
    if chat_template is None or str(chat_template).strip() == "":
        return model_template(model_path)
    value = str(chat_template)
    if value in BUILTIN:
        return (TEMPLATES_DIR / f"{value}.jinja").read_text(encoding="utf-8"), value
    if "{%" in value or "{{" in value:
        return value, "inline"
    path = Path(value).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8"), str(path)
    raise ConfigError(f"data.chat_template={value!r} is neither a built-in template nor an existing .jinja file"
                      f"{did_you_mean(value, list(BUILTIN))}; built-in templates: {', '.join(BUILTIN)}")


def model_template(model_path: str | None) -> tuple[str | None, str | None]:
    """The model's own template: ``chat_template.jinja`` in its directory, else ``tokenizer_config.json``'s."""
    if not model_path:
        return None, None
    model = Path(model_path)
    jinja_file = model / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8"), f"model:{jinja_file}"
    config = _tokenizer_config(model)
    tmpl = config.get("chat_template")
    if isinstance(tmpl, list):  # named templates: [{"name": "default", "template": ...}, ...]
        tmpl = {t.get("name"): t.get("template") for t in tmpl if isinstance(t, dict)}.get("default")
    if isinstance(tmpl, str) and tmpl:
        return tmpl, f"model:{model / 'tokenizer_config.json'}"
    return None, None


def special_tokens(model_path: str | None) -> dict[str, str]:
    """Named special tokens (bos_token, eos_token, ...) of the model's tokenizer, as templates see them."""
    if not model_path:
        return {}
    model = Path(model_path)
    out: dict[str, str] = {}
    for source in (_read_json(model / "special_tokens_map.json"), _tokenizer_config(model)):
        for name in SPECIAL_TOKENS:
            value = source.get(name)
            if isinstance(value, dict):  # serialised AddedToken
                value = value.get("content")
            if isinstance(value, str):
                out[name] = value
    return out


def render(template: str, messages: list[dict[str, Any]], add_generation_prompt: bool = False,
           special_tokens: dict[str, str] | None = None) -> str:
    """Render ``messages`` as transformers' ``apply_chat_template(..., tokenize=False)`` would.

    :param template: template text (from :func:`resolve`).
    :param special_tokens: ``bos_token``, ``eos_token``, ... (from :func:`special_tokens`).
    :raises jinja2.TemplateError: the template refused the conversation (``raise_exception``) or failed.
    """
    chat = [{k: v for k, v in m.items() if v is not None} for m in messages]
    tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
    return compile_template(template).render(messages=chat, tools=None, documents=None,
                                             add_generation_prompt=add_generation_prompt, **tokens)


@lru_cache(maxsize=16)
def compile_template(template: str):
    """Compile ``template`` in a sandbox configured like transformers' (cached).

    :raises ConfigError: the template has a syntax error.
    """
    import jinja2

    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"the chat template does not compile: {exc.message} (template line {exc.lineno})") from exc


@lru_cache(maxsize=1)
def _environment():
    import jinja2
    import jinja2.ext
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` (assistant-mask markers): renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        """A namespace that refuses underscore names (no way into CPython internals)."""

        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat templates cannot store underscore-prefixed attributes on a namespace: {name!r}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now,
                       dict=TemplateDict(), namespace=TemplateNamespace)
    return env


def _tokenizer_config(model: Path) -> dict:
    return _read_json(model / "tokenizer_config.json")


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
