"""Errors a user can act on. Each prints as one short message, never a traceback
(set ``debug=true`` or ``ANYTUNE_DEBUG=1`` to see one)."""
from __future__ import annotations

import difflib


class AnytuneError(Exception):
    """Base of every error that is the user's to fix (bad config, bad data, missing engine)."""


class ConfigError(AnytuneError):
    """A config field has an unknown name or a value outside its allowed set."""

    @classmethod
    def unknown_key(cls, key: str, allowed: list[str], prefix: str = "") -> "ConfigError":
        """``key`` is not a field; ``allowed`` are the field names at its level, under ``prefix``."""
        word = key[len(prefix):].split(".")[0]
        return cls(f"unknown config field '{key}'{did_you_mean(word, allowed, prefix)}; "
                   f"allowed fields: {', '.join(prefix + a for a in sorted(allowed))}")

    @classmethod
    def bad_value(cls, key: str, value: object, allowed: list[str]) -> "ConfigError":
        return cls(f"{key}={value!r} is not allowed{did_you_mean(str(value), allowed)}; "
                   f"allowed values: {', '.join(map(str, allowed))}")


class UnsupportedFeature(ConfigError):
    """The chosen step cannot do what the job asks; names the steps that can."""

    def __init__(self, backend: str, field: str, value: object, able: list[str], why: str = "",
                 kind: str = "backend"):
        self.backend, self.field, self.value, self.able = backend, field, value, able
        others = (f"{kind}s that support it: {', '.join(able)}" if able
                  else f"no installed {kind} supports it")
        super().__init__(f"{kind} '{backend}' does not support {field}={value}"
                         f"{' (' + why + ')' if why else ''}; {others}")


class UnreadField(UnsupportedFeature):
    """A field is set away from its default but the chosen backend's engine does not read it."""

    def __init__(self, backend: str, field: str, value: object, able: list[str]):
        self.backend, self.field, self.value, self.able = backend, field, value, able
        others = f"backends that read it: {', '.join(able)}" if able else "no installed backend reads it"
        ConfigError.__init__(self, f"backend '{backend}' does not read {field} (set to {value!r}), so it would be "
                                   f"silently ignored; leave it at its default or use another backend; {others}")


class DataError(AnytuneError):
    """Rows of the user's data are malformed; ``problems`` lists (file, line, reason)."""

    def __init__(self, problems: list[tuple[str, int | str, str]], limit: int = 20):
        self.problems = problems
        lines = [f"  {f}:{n}: {why}" for f, n, why in problems[:limit]]
        more = len(problems) - limit
        if more > 0:
            lines.append(f"  ... and {more} more")
        super().__init__(f"{len(problems)} bad row(s) in the data "
                         "(set data.on_bad_rows=skip to drop them and go on):\n" + "\n".join(lines))


class EngineMissing(AnytuneError):
    """The backend's engine is not importable by the interpreter that should run it."""


def did_you_mean(word: str, choices: list, prefix: str = "") -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    names = [str(c) for c in choices]
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    if not close:  # abbreviations: lr -> learning_rate
        initials = {"".join(p[0] for p in n.split("_") if p): n for n in names}
        close = [initials[word]] if word in initials else []
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""
