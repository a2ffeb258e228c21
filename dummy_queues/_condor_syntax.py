"""What the fake HTCondor reads: submit descriptions (commands, macros, the queue statement,
the new ``arguments`` and ``environment`` syntax) and ``-constraint`` ClassAd expressions.

Only the part of each language that pipelines use is understood; anything else is refused
the way condor_submit and condor_q refuse what they cannot parse.
"""
from __future__ import annotations

import re
from typing import Any

from ._cmd import UsageError

_MACRO = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.]*)\)")
_QUEUE = re.compile(r"^queue(?:\s+(\d+))?(?:\s+([A-Za-z_][A-Za-z0-9_]*)\s+in\s*\((.*)\))?\s*$",
                    re.I | re.S)


def parse_submit(text: str) -> tuple[dict[str, str], list[Any]]:
    """A submit description -> ({command (lower case): raw value}, [count, variable, items]).
    Only one queue statement, and it must be last, as for one cluster."""
    commands: dict[str, str] = {}
    queue: list[Any] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if queue is not None:
            raise UsageError(f"ERROR: on Line {number} of submit file: only one queue statement "
                             f"is supported by dummy_queues")
        if line.lower() == "queue" or line.lower().startswith("queue "):
            match = _QUEUE.match(line)
            if match is None:
                raise UsageError(f"ERROR: on Line {number} of submit file: invalid queue "
                                 f"statement '{line}'")
            items = match.group(3).replace(",", " ").split() if match.group(2) else None
            queue = [int(match.group(1) or 1), match.group(2), items]
            continue
        name, eq, value = line.partition("=")
        if not eq or not name.strip():
            raise UsageError(f"ERROR: on Line {number} of submit file: Parse error, expected "
                             f"'command = value': {line}")
        commands[name.strip().lower()] = value.strip()
    if queue is None:
        raise UsageError("ERROR: no queue statement in the submit file: no jobs queued")
    return commands, queue


def expand(value: str, macros: dict[str, str]) -> str:
    """Macro substitution: ``$(Name)`` from ``macros`` (case-insensitively), an unknown one
    becomes empty, as condor_submit does."""
    lowered = {k.lower(): v for k, v in macros.items()}
    return _MACRO.sub(lambda m: lowered.get(m.group(1).lower(), ""), value)


def split_new_syntax(value: str, what: str) -> list[str]:
    """The new syntax of ``arguments`` and ``environment``: the whole value in double quotes,
    words split at spaces, a single-quoted word may hold spaces, ``''`` and ``""`` are literal
    quotes."""
    if not (len(value) >= 2 and value[0] == value[-1] == '"'):
        raise UsageError(f"ERROR: dummy_queues understands only the new {what} syntax "
                         f"(the value in double quotes)")
    body, words, word, quoted, i = value[1:-1], [], None, False, 0
    while i < len(body):
        char, ahead = body[i], body[i + 1:i + 2]
        if char in "'\"" and ahead == char and (quoted or char == '"'):
            word = (word or "") + char
            i += 2
            continue
        if char == "'":
            quoted = not quoted
            word = word or ""
        elif char.isspace() and not quoted:
            if word is not None:
                words.append(word)
            word = None
        else:
            word = (word or "") + char
        i += 1
    if quoted:
        raise UsageError(f"ERROR: {what} string has an unterminated single quote")
    return words if word is None else [*words, word]


# ---------------------------------------------------------------- constraints
_TOKEN = re.compile(r'\s*(?:(\d+)|"((?:[^"\\]|\\.)*)"|(\|\||&&|==|!=|=\?=|=!=|[()!])|'
                    r'([A-Za-z_][A-Za-z0-9_.]*))')


def tokens(text: str) -> list[tuple[str, Any]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise UsageError(f"Error: Argument -constraint requires a valid expression: {text}")
        number, string, operator, name = match.groups()
        if number is not None:
            out.append(("value", int(number)))
        elif string is not None:
            out.append(("value", string.replace('\\"', '"')))
        elif operator is not None:
            out.append(("op", operator))
        elif name.lower() in ("true", "false"):
            out.append(("value", name.lower() == "true"))
        else:
            out.append(("name", name))
        pos = match.end()
    return out


class Constraint:
    """A ClassAd constraint of ``||``, ``&&``, ``!``, comparisons (``==``, ``!=``, ``=?=``,
    ``=!=``) of attributes and literals, and parentheses. Attribute names are case-insensitive
    and strings compare case-insensitively with ``==``, as in ClassAds."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokens(text)
        self.tree, rest = self._or(0)
        if rest != len(self.tokens):
            raise UsageError(f"Error: Argument -constraint requires a valid expression: {text}")

    def _or(self, i: int) -> tuple[Any, int]:
        left, i = self._and(i)
        while i < len(self.tokens) and self.tokens[i] == ("op", "||"):
            right, i = self._and(i + 1)
            left = ("||", left, right)
        return left, i

    def _and(self, i: int) -> tuple[Any, int]:
        left, i = self._compare(i)
        while i < len(self.tokens) and self.tokens[i] == ("op", "&&"):
            right, i = self._compare(i + 1)
            left = ("&&", left, right)
        return left, i

    def _compare(self, i: int) -> tuple[Any, int]:
        left, i = self._unary(i)
        if i < len(self.tokens) and self.tokens[i][1] in ("==", "!=", "=?=", "=!="):
            operator = self.tokens[i][1]
            right, i = self._unary(i + 1)
            left = (operator, left, right)
        return left, i

    def _unary(self, i: int) -> tuple[Any, int]:
        if i >= len(self.tokens):
            raise UsageError(f"Error: Argument -constraint requires a valid expression: {self.text}")
        kind, value = self.tokens[i]
        if (kind, value) == ("op", "!"):
            inner, i = self._unary(i + 1)
            return ("!", inner), i
        if (kind, value) == ("op", "("):
            inner, i = self._or(i + 1)
            if i >= len(self.tokens) or self.tokens[i] != ("op", ")"):
                raise UsageError(f"Error: Argument -constraint requires a valid expression: "
                                 f"{self.text}")
            return inner, i + 1
        if kind == "op":
            raise UsageError(f"Error: Argument -constraint requires a valid expression: {self.text}")
        return (kind, value), i + 1

    def matches(self, ad: dict[str, Any]) -> bool:
        return self._eval(self.tree, {k.lower(): v for k, v in ad.items()}) is True

    def _eval(self, node: Any, ad: dict[str, Any]) -> Any:
        head = node[0]
        if head == "value":
            return node[1]
        if head == "name":
            return ad.get(node[1].lower())
        if head == "!":
            value = self._eval(node[1], ad)
            return None if value is None else not value
        left, right = self._eval(node[1], ad), self._eval(node[2], ad)
        if head == "||":
            return bool(left) or bool(right)
        if head == "&&":
            return bool(left) and bool(right)
        if head in ("=?=", "=!="):
            same = type(left) is type(right) and left == right
            return same if head == "=?=" else not same
        if left is None or right is None:
            return None  # UNDEFINED: the ad does not match
        if isinstance(left, str) and isinstance(right, str):
            left, right = left.lower(), right.lower()
        return (left == right) if head == "==" else (left != right)
