"""Chat-template rendering as transformers does it. jinja2 and the standard library only.

:mod:`core.data.chat_template` renders with it, and so do the engines' workers: this file is
copied into plan directories (``plan/chatrender.py``, like ``plan/runproto.py``), so
an ejected plan renders the same text where anytune is not installed. Keep it free of
anytune imports; jinja2 is imported only when a template is compiled.
"""
from __future__ import annotations

import json
import os
from datetime import datetime
from functools import lru_cache
from typing import Any

#: The named special tokens transformers passes to every chat template.
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def read_json(path) -> dict:
    """The JSON object in ``path``; ``{}`` when it is missing, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def special_tokens(model_dir) -> dict[str, str]:
    """Named special tokens (bos_token, eos_token, ...) of a Hugging Face tokenizer directory, as templates see them."""
    out: dict[str, str] = {}
    for source in (read_json(os.path.join(model_dir, "special_tokens_map.json")),
                   read_json(os.path.join(model_dir, "tokenizer_config.json"))):
        for name in SPECIAL_TOKENS:
            value = source.get(name)
            if isinstance(value, dict):  # serialised AddedToken
                value = value.get("content")
            if isinstance(value, str):
                out[name] = value
    return out


def render(compiled, messages: list[dict[str, Any]], add_generation_prompt: bool = False,
           special_tokens: dict[str, str] | None = None, tools: list[dict[str, Any]] | None = None) -> str:
    """Render ``messages`` with a compiled template as ``apply_chat_template(..., tokenize=False)`` would.

    :param compiled: a template compiled in :func:`environment`.
    :param special_tokens: ``bos_token``, ``eos_token``, ... (from :func:`special_tokens`).
    :param tools: tool schemas (JSON objects), passed to the template as ``tools`` (None: no tools).
    :raises jinja2.TemplateError: the template refused the conversation (``raise_exception``) or failed.
    """
    chat = [{k: v for k, v in m.items() if v is not None} for m in messages]
    tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
    return compiled.render(messages=chat, tools=tools or None, documents=None,
                           add_generation_prompt=add_generation_prompt, **tokens)


@lru_cache(maxsize=1)
def environment():
    """A Jinja sandbox configured as transformers configures it for ``apply_chat_template`` (cached)."""
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
