"""The chat template of record: which Jinja template turns a conversation into text, and rendering it.

Part of the data step: every engine renders conversations with the one template
resolved here and written to ``data/chat_template.jinja``, so all engines train on
the same text. :func:`render` reproduces ``transformers``' ``apply_chat_template(...,
tokenize=False)`` byte for byte (same sandbox, options and globals) without importing
transformers; the sandbox itself is :mod:`core.chatrender` (standard library and jinja2
only), which plans carry so an ejected plan renders the same text.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from core import chatrender
from core.errors import ConfigError, did_you_mean

TEMPLATES_DIR = Path(__file__).parent.parent / "assets" / "templates"
#: Built-in templates (``data.chat_template=<name>``), copied from the Hugging Face models that made them known.
BUILTIN = ("chatml", "llama3", "zephyr")
#: The named special tokens transformers passes to every chat template.
SPECIAL_TOKENS = chatrender.SPECIAL_TOKENS


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
    return chatrender.special_tokens(model_path) if model_path else {}


def render(template: str, messages: list[dict[str, Any]], add_generation_prompt: bool = False,
           special_tokens: dict[str, str] | None = None, tools: list[dict[str, Any]] | None = None) -> str:
    """Render ``messages`` as transformers' ``apply_chat_template(..., tokenize=False)`` would.

    :param template: template text (from :func:`resolve`).
    :param special_tokens: ``bos_token``, ``eos_token``, ... (from :func:`special_tokens`).
    :param tools: tool schemas passed to the template as ``tools``.
    :raises jinja2.TemplateError: the template refused the conversation (``raise_exception``) or failed.
    """
    return chatrender.render(compile_template(template), messages, add_generation_prompt, special_tokens, tools)


@lru_cache(maxsize=16)
def compile_template(template: str):
    """Compile ``template`` in a sandbox configured like transformers' (cached).

    :raises ConfigError: the template has a syntax error.
    """
    import jinja2

    try:
        return chatrender.environment().from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"the chat template does not compile: {exc.message} (template line {exc.lineno})") from exc


def _tokenizer_config(model: Path) -> dict:
    return chatrender.read_json(model / "tokenizer_config.json")
