"""The chat template of record as an Ollama (Go ``text/template``) TEMPLATE, and a renderer to check it.

Ollama never runs Jinja: it matches a GGUF's Jinja template against its own list and otherwise falls back to
``{{ .Prompt }}``, dropping roles. So the exporter writes the template itself. :func:`derive` renders the Jinja
template on probe conversations and reads off what it puts around each role's content (a prefix and a suffix per
role, the generation prompt, a head before the first turn); :func:`go_template` writes those as a Go template over
``.Messages``; :func:`render` is a small interpreter of Go's template syntax (the subset Ollama's templates use:
``range``, ``if``/``else if``/``else``, variables, ``eq ne and or not len slice``, fields, trim markers), with
which the exporter checks, on sample conversations, that Ollama would render exactly the text the Jinja template
renders, before anything is written. Templates this cannot express (a default system prompt, per-position
formatting, content rewritten) are refused with the reason; ``export.ollama.template`` takes a Go template of
your own, checked the same way. Standard library and ``core.chatrender`` only.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

ROLES = ("system", "user", "assistant")
"""Roles the Go template renders (Ollama's tool messages are not written)."""
MARK = "\x01ANYTUNE{}\x02"
"""Probe content: a marker no template produces, so each role's prefix and suffix can be cut out around it."""
SAMPLES: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "Add 3 and 4.\nShow your work."}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "One"},
     {"role": "assistant", "content": "Un"}, {"role": "user", "content": "Two"},
     {"role": "assistant", "content": "Deux"}, {"role": "user", "content": "{{ .Content }} and \"quotes\""}],
]
"""Conversations both renderings must agree on (each ends with a user turn, as a chat request does)."""


class CannotExpress(ValueError):
    """The Jinja template does something a per-role Go template cannot say."""


@dataclass
class Blocks:
    """What the Jinja template writes around each turn."""

    head: str
    """Text before the first turn (a BOS token the runtime adds itself is left out: ``dropped_head``)."""
    roles: dict[str, tuple[str, str]]
    """role -> (prefix, suffix) around its content."""
    generation: str
    """The generation prompt (``add_generation_prompt``) after the last turn."""
    dropped_head: str = ""
    """Head text left to the runtime (the BOS token llama.cpp adds from the GGUF)."""
    notes: list[str] = field(default_factory=list)
    """What the Ollama rendering does differently (e.g. content the Jinja template trims)."""


def _split(text: str, mark: str, what: str) -> tuple[str, str]:
    if text.count(mark) != 1:
        raise CannotExpress(f"the template does not write {what}'s content exactly once, as it is")
    a, b = text.split(mark)
    return a, b


def derive(render: Callable[[list, bool], str], bos: str | None = None) -> Blocks:
    """Read each role's prefix and suffix, the head and the generation prompt off the Jinja template.

    :param render: ``render(messages, add_generation_prompt) -> str`` with the template of record.
    :param bos: the BOS token text; a head equal to it is left to the runtime (llama.cpp adds it).
    :raises CannotExpress: the template is not a head followed by one block per turn.
    """
    m = [MARK.format(i) for i in range(4)]
    try:
        one = render([{"role": "user", "content": m[0]}], False)
        two = render([{"role": "user", "content": m[0]}, {"role": "assistant", "content": m[1]}], False)
        three = render([{"role": "user", "content": m[0]}, {"role": "assistant", "content": m[1]},
                        {"role": "user", "content": m[2]}], False)
        gen = render([{"role": "user", "content": m[0]}], True)
        with_system = render([{"role": "system", "content": m[3]}, {"role": "user", "content": m[0]}], False)
    except Exception as exc:  # the template refused a plain conversation
        raise CannotExpress(f"the template refused a probe conversation: {exc}") from exc
    if not (two.startswith(one) and three.startswith(two) and gen.startswith(one)):
        raise CannotExpress("the template renders earlier turns differently once later turns follow")
    user = _split(three[len(two):], m[2], "a later user turn")
    assistant = _split(two[len(one):], m[1], "the assistant turn")
    block = user[0] + m[0] + user[1]
    if not one.endswith(block):
        raise CannotExpress("the first user turn is written differently from later ones")
    head = one[: len(one) - len(block)]
    if not with_system.startswith(head) or not with_system.endswith(block):
        raise CannotExpress("a system turn changes the text around the other turns (e.g. a default system prompt)")
    system = _split(with_system[len(head): len(with_system) - len(block)], m[3], "the system turn")
    blocks = Blocks(head=head, roles={"system": system, "user": user, "assistant": assistant},
                    generation=gen[len(one):])
    if bos and head == bos:
        blocks.head, blocks.dropped_head = "", head
    padded = render([{"role": "user", "content": "  x  "}], False)
    if "  x  " not in padded:
        blocks.notes.append("the Jinja template trims (or rewrites) message content; Ollama passes it as sent")
    return blocks


def _lit(s: str) -> str:
    """Literal text as a Go string action (``{{ "..." }}``): no literal text in the template, so trim markers
    and line breaks between actions never touch it. JSON's escapes are valid Go string escapes."""
    return "{{ " + json.dumps(s, ensure_ascii=False) + " }}" if s else ""


def go_template(blocks: Blocks) -> str:
    """The Go template over ``.Messages``: each turn's prefix, content and suffix; after the last turn the generation
    prompt, unless it is an assistant turn, which stays open (Ollama continues it)."""
    out = [_lit(blocks.head) + "{{- range $i, $_ := .Messages }}",
           "{{- $last := eq (len (slice $.Messages $i)) 1 }}"]
    for n, role in enumerate(ROLES):
        pre, suf = blocks.roles[role]
        cond = f"{{{{- {'if' if n == 0 else 'else if'} eq .Role {json.dumps(role)} }}}}"
        if role == "assistant":
            out.append(f"{cond}{_lit(pre)}{{{{ .Content }}}}{{{{ if not $last }}}}{_lit(suf)}{{{{ end }}}}")
        else:
            out.append(f"{cond}{_lit(pre)}{{{{ .Content }}}}{_lit(suf)}")
    out.append("{{- end }}")
    out.append(f"{{{{- if and $last (ne .Role \"assistant\") }}}}{_lit(blocks.generation)}{{{{ end }}}}")
    out.append("{{- end }}")
    return "\n".join(out)


def stops(blocks: Blocks, eos: str | None) -> list[str]:
    """Stop sequences: the assistant suffix without its surrounding whitespace, and the EOS token."""
    out = [s for s in (blocks.roles["assistant"][1].strip(), eos) if s]
    return list(dict.fromkeys(out))


# -- a small Go text/template interpreter (the subset chat templates use) --------------------------------------

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|`[^`]*`|:=|=|,|\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*|'
                    r'\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*|\.|[A-Za-z_][A-Za-z0-9_]*|-?\d+)')


class GoTemplateError(ValueError):
    """A template this interpreter cannot parse or run."""


def _parse(template: str) -> list:
    """Tokens: ("text", s) and ("action", body), with Go's trim markers applied to the neighbouring text."""
    items: list[list] = []
    pos = 0
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        items.append(["text", text])
        items.append(["action", m.group(2).strip(), bool(m.group(3))])
        pos = m.end()
    items.append(["text", template[pos:]])
    for i, it in enumerate(items):  # right trim: whitespace at the start of the following text
        if it[0] == "action" and it[2] and i + 1 < len(items):
            items[i + 1][1] = items[i + 1][1].lstrip(" \t\r\n")
    return [(it[0], it[1]) for it in items if it[0] == "action" or it[1]]


def _tree(items: list, i: int = 0, stop: tuple = ()) -> tuple[list, int, str | None]:
    """Nested nodes up to an ``end``/``else`` (returned as the terminator)."""
    nodes: list = []
    while i < len(items):
        kind, body = items[i]
        if kind == "text":
            nodes.append(("text", body))
            i += 1
            continue
        word = body.split(None, 1)[0] if body else ""
        if word in ("end", "else") and stop:
            return nodes, i, body
        if word in ("if", "range", "with"):
            branches, i = [], i
            cond = body[len(word):].strip()
            while True:
                inner, i, term = _tree(items, i + 1, ("end", "else"))
                branches.append((cond, inner))
                if term is None:
                    raise GoTemplateError(f"unclosed {{{{ {word} }}}}")
                if term == "end":
                    break
                rest = term[len("else"):].strip()
                if rest.startswith("if "):
                    cond = rest[3:].strip()
                elif rest == "":
                    cond = None
                else:
                    raise GoTemplateError(f"unsupported {{{{ {term} }}}}")
            nodes.append((word, branches))
            i += 1
            continue
        if word in ("end", "else"):
            raise GoTemplateError(f"unexpected {{{{ {body} }}}}")
        nodes.append(("expr", body))
        i += 1
    return nodes, i, None


def _tokens(expr: str) -> list[str]:
    out, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise GoTemplateError(f"cannot read {expr[pos:]!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


def _print(v: Any) -> str:
    """A value as Go's template prints it (booleans lower-case, nil as ``<no value>``)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return "<no value>" if v is None else str(v)


def _truth(v: Any) -> bool:
    return bool(v) if not isinstance(v, (int, float)) or isinstance(v, bool) else v != 0


class _Run:
    FUNCS: dict[str, Callable] = {
        "eq": lambda a, *b: any(a == x for x in b), "ne": lambda a, b: a != b,
        "and": lambda *a: next((x for x in a if not _truth(x)), a[-1]),
        "or": lambda *a: next((x for x in a if _truth(x)), a[-1]), "not": lambda a: not _truth(a),
        "len": lambda a: len(a), "slice": lambda a, *i: a[i[0]:i[1]] if len(i) == 2 else (a[i[0]:] if i else a),
        "print": lambda *a: "".join(map(str, a)),
    }

    def __init__(self, data: dict):
        self.root, self.scopes = data, [{"$": data}]

    def var(self, name: str) -> Any:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        raise GoTemplateError(f"undefined variable {name}")

    def field(self, obj: Any, path: list[str]) -> Any:
        for p in path:
            obj = obj.get(p) if isinstance(obj, dict) else getattr(obj, p)
        return obj

    def term(self, toks: list[str], dot: Any) -> Any:
        t = toks.pop(0)
        if t == "(":
            v = self.pipeline(toks, dot, closing=True)
            return v
        if t.startswith('"'):
            return json.loads(t)
        if t.startswith("`"):
            return t[1:-1]
        if re.fullmatch(r"-?\d+", t):
            return int(t)
        if t in ("true", "false"):
            return t == "true"
        if t == ".":
            return dot
        if t.startswith("$"):
            name, *path = t.split(".")
            return self.field(self.var(name), path)
        if t.startswith("."):
            return self.field(dot, t[1:].split("."))
        raise GoTemplateError(f"unexpected {t!r}")

    def pipeline(self, toks: list[str], dot: Any, closing: bool = False) -> Any:
        args = []
        while toks and toks[0] != ")":
            if toks[0] in self.FUNCS:
                args.append(("fn", toks.pop(0)))
            else:
                args.append(("val", self.term(toks, dot)))
        if closing:
            if not toks:
                raise GoTemplateError("missing )")
            toks.pop(0)
        if not args:
            raise GoTemplateError("empty pipeline")
        if args[0][0] == "fn":
            return self.FUNCS[args[0][1]](*[a[1] for a in args[1:]])
        if len(args) != 1:
            raise GoTemplateError("a value cannot take arguments")
        return args[0][1]

    def eval(self, expr: str, dot: Any) -> Any:
        toks = _tokens(expr)
        if len(toks) >= 2 and toks[0].startswith("$") and toks[1] in (":=", "="):
            value = self.pipeline(toks[2:], dot)
            if toks[1] == ":=":
                self.scopes[-1][toks[0]] = value
            else:
                for scope in reversed(self.scopes):
                    if toks[0] in scope:
                        scope[toks[0]] = value
                        break
            return ""
        value = self.pipeline(toks, dot)
        if toks:
            raise GoTemplateError(f"unexpected {toks[0]!r} in {expr!r}")
        return value

    def nodes(self, nodes: list, dot: Any, out: list[str]) -> None:
        for kind, body in nodes:
            if kind == "text":
                out.append(body)
            elif kind == "expr":
                v = self.eval(body, dot)
                out.append("" if v is None and body.startswith("$") else _print(v))
            elif kind == "if":
                for cond, inner in body:
                    if cond is None or _truth(self.eval(cond, dot)):
                        self.scopes.append({})
                        self.nodes(inner, dot, out)
                        self.scopes.pop()
                        break
            elif kind == "range":
                self.range(body, dot, out)
            else:
                raise GoTemplateError(f"{kind} is not supported")

    def range(self, branches: list, dot: Any, out: list[str]) -> None:
        cond, inner = branches[0]
        m = re.fullmatch(r"(\$\w*)\s*,\s*(\$\w*)\s*:=\s*(.+)", cond) or re.fullmatch(r"(\$\w*)\s*:=\s*(.+)", cond)
        names, expr = ((m.group(1), m.group(2)), m.group(3)) if m and m.re.groups == 3 else (
            ((None, m.group(1)), m.group(2)) if m else ((None, None), cond))
        items = self.eval(expr, dot) or []
        if not items and len(branches) > 1:
            self.nodes(branches[1][1], dot, out)
        for i, item in enumerate(items):
            scope = {}
            if names[0]:
                scope[names[0]] = i
            if names[1]:
                scope[names[1]] = item
            self.scopes.append(scope)
            self.nodes(inner, item, out)
            self.scopes.pop()


def render(template: str, messages: list[dict[str, str]], system: str = "") -> str:
    """Render a Go template as Ollama's chat endpoint does: ``.Messages`` (each with ``.Role`` and ``.Content``),
    ``.System``, ``.Prompt`` (the last user message), ``.Response`` empty.

    :raises GoTemplateError: syntax or a construct outside the supported subset.
    """
    msgs = [{"Role": m["role"], "Content": m.get("content") or ""} for m in messages]
    prompt = next((m["Content"] for m in reversed(msgs) if m["Role"] == "user"), "")
    data = {"Messages": msgs, "System": system, "Prompt": prompt, "Response": "", "Tools": None}
    nodes, _, term = _tree(_parse(template))
    if term is not None:
        raise GoTemplateError(f"unexpected {{{{ {term} }}}}")
    out: list[str] = []
    _Run(data).nodes(nodes, data, out)
    return "".join(out)


def check(go: str, jinja: Callable[[list, bool], str], dropped_head: str = "") -> list[str]:
    """The sample conversations on which the Go template's text differs from the Jinja template's (with the
    generation prompt); each as ``"sample N: go=... jinja=..."``. Empty: equivalent on all of them."""
    problems = []
    for n, msgs in enumerate(SAMPLES, 1):
        want = jinja(msgs, True)
        if dropped_head and want.startswith(dropped_head):
            want = want[len(dropped_head):]
        try:
            got = render(go, msgs)
        except GoTemplateError as exc:
            return [f"the Go template does not render: {exc}"]
        if got != want:
            problems.append(f"sample {n}: go={got!r} jinja={want!r}")
    return problems
