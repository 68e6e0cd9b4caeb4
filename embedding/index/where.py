"""The text form of filters, as `embedding search --where` and `"where"` over HTTP take it.

    taken_at >= 2024-01-01 and 'red' in tags
    price between 1 and 10 and (category = shoes or category in ('bags', 'hats'))
    tags contains any ('red', 'blue') and not note exists

A clause is a column, an operator and a value: `=` (`==`), `!=` (`<>`), `<`, `<=`, `>`, `>=`, `in (...)`,
`not in (...)`, `contains`, `contains any (...)`, `between A and B`, `exists`; or `VALUE in COLUMN` (a list
column holds the value). Clauses join with `and`, `or`, `not` and parentheses (`and` binds first). A value
is quoted ('...' or "...", a backslash escapes the next character) or a bare word: a number, `true`,
`false`, a date or a time (2024-01-31, 2024-01-31T10:00:00Z) or a word. Keywords are case-insensitive.
The text becomes a filter tree (embedding.index.filters); nothing of it is evaluated as code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from embedding.index.filters import All, AnyOf, Filter, FilterError, Not, Scalar, checked_size, clause

MAX_LENGTH = 10_000
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<quoted>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<symbol><=|>=|!=|<>|==|=|<|>|\(|\)|,)
      | (?P<word>[^\s()<>=!,'"]+)
    )""",
    re.VERBOSE | re.DOTALL,
)
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_SYMBOLS = {"=": "eq", "==": "eq", "!=": "ne", "<>": "ne", "<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}
_KEYWORDS = {"and", "or", "not", "in", "contains", "any", "between", "exists"}


@dataclass(frozen=True)
class Token:
    kind: str  # quoted, symbol, word, end
    text: str  # a quoted token: its value, unescaped
    at: int  # character offset, for errors

    def is_(self, word: str) -> bool:
        return self.kind in ("word", "symbol") and self.text.lower() == word


def tokens(text: str) -> list[Token]:
    out, at = [], 0
    while text[at:].strip():
        found = _TOKEN.match(text, at)
        if not found or found.end() == at:
            where = at + len(text[at:]) - len(text[at:].lstrip())
            raise FilterError(f"filter: unexpected {text[where]!r} at character {where + 1}")
        kind = found.lastgroup or "word"
        value = found.group(kind)
        if kind == "quoted":
            value = re.sub(r"\\(.)", r"\1", value[1:-1], flags=re.DOTALL)
        out.append(Token(kind, value, found.start(kind)))
        at = found.end()
    out.append(Token("end", "", len(text)))
    return out


def parse_where(text: str) -> Filter:
    """The filter a `--where` text says, or a FilterError naming what and where."""
    if not isinstance(text, str) or not text.strip():
        raise FilterError("filter: the expression is empty")
    if len(text) > MAX_LENGTH:
        raise FilterError(f"filter: the expression is longer than {MAX_LENGTH} characters")
    parser = _Parser(tokens(text))
    found = parser.expression(0)
    parser.expect_end()
    return checked_size(found)


class _Parser:
    def __init__(self, items: list[Token]) -> None:
        self.items = items
        self.at = 0

    @property
    def next(self) -> Token:
        return self.items[self.at]

    def take(self) -> Token:
        token = self.items[self.at]
        self.at += 1
        return token

    def fail(self, expected: str) -> FilterError:
        token = self.next
        got = "the end" if token.kind == "end" else repr(token.text)
        return FilterError(f"filter: expected {expected} at character {token.at + 1}, got {got}")

    def expect(self, word: str) -> None:
        if not self.next.is_(word):
            raise self.fail(f"'{word}'")
        self.take()

    def expect_end(self) -> None:
        if self.next.kind != "end":
            raise self.fail("'and', 'or' or the end")

    def expression(self, depth: int) -> Filter:
        if depth > 32:
            raise FilterError("filter: nested deeper than 32")
        parts = [self.conjunction(depth)]
        while self.next.is_("or"):
            self.take()
            parts.append(self.conjunction(depth))
        return parts[0] if len(parts) == 1 else AnyOf(tuple(parts))

    def conjunction(self, depth: int) -> Filter:
        parts = [self.negation(depth)]
        while self.next.is_("and"):
            self.take()
            parts.append(self.negation(depth))
        return parts[0] if len(parts) == 1 else All(tuple(parts))

    def negation(self, depth: int) -> Filter:
        if self.next.is_("not"):
            self.take()
            return Not(self.negation(depth + 1))
        if self.next.is_("("):
            self.take()
            inner = self.expression(depth + 1)
            self.expect(")")
            return inner
        return self.predicate()

    def predicate(self) -> Filter:
        first = self.take()
        if first.kind == "end" or (first.kind == "word" and first.text.lower() in _KEYWORDS):
            self.at -= 1
            raise self.fail("a column name")
        if first.kind == "quoted" or (self.next.is_("in") and self.items[self.at + 1].kind == "word"):
            # VALUE in COLUMN: a list column holds the value.
            self.expect("in")
            column = self.column()
            return clause(column, "contains", _value(first))
        if first.kind != "word":
            self.at -= 1
            raise self.fail("a column name")
        column, op = first.text, self.take()
        if op.kind == "symbol" and op.text in _SYMBOLS:
            return clause(column, _SYMBOLS[op.text], self.value())
        if op.is_("not") and self.next.is_("in"):
            self.take()
            return Not(clause(column, "in", self.values()))
        if op.is_("in"):
            return clause(column, "in", self.values())
        if op.is_("contains"):
            if self.next.is_("any"):
                self.take()
                return clause(column, "containsAny", self.values())
            return clause(column, "contains", self.value())
        if op.is_("between"):
            low = self.value()
            self.expect("and")
            return All((clause(column, "gte", low), clause(column, "lte", self.value())))
        if op.is_("exists"):
            return clause(column, "exists", True)
        self.at -= 1
        raise self.fail(f"an operator after '{column}' (= != < <= > >= in contains between exists)")

    def column(self) -> str:
        token = self.take()
        if token.kind != "word" or token.text.lower() in _KEYWORDS:
            self.at -= 1
            raise self.fail("a column name")
        return token.text

    def value(self) -> Scalar:
        token = self.take()
        if token.kind == "quoted" or (token.kind == "word" and token.text.lower() not in _KEYWORDS):
            return _value(token)
        self.at -= 1
        raise self.fail("a value")

    def values(self) -> list[Scalar]:
        self.expect("(")
        found = [self.value()]
        while self.next.is_(","):
            self.take()
            found.append(self.value())
        self.expect(")")
        return found


def _value(token: Token) -> Scalar:
    """A quoted token is text; a bare word a number, true, false, or text (a date is text until typed)."""
    if token.kind == "quoted":
        return token.text
    if _NUMBER.fullmatch(token.text):
        return float(token.text) if any(c in token.text for c in ".eE") else int(token.text)
    if token.text.lower() in ("true", "false"):
        return token.text.lower() == "true"
    return token.text
