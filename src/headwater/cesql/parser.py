"""CESQL lexer and parser: text -> a small tree of tuples (spec.md 2, CESQLParser.g4).

How this works: a hand-written lexer produces tokens with their offsets; a
precedence-climbing parser builds nodes following the grammar's precedence
(spec.md 3.6): function invocations, then unary NOT and minus, LIKE, EXISTS,
IN, then `* / %`, `+ -`, comparisons, and AND/OR/XOR last. Keywords and
function names are case-insensitive; value identifiers are letters and digits
(spec.md 2.2), and since CloudEvents attribute names are lower-case, an
upper-case letter reads as its lower-case one (``EXISTS SOURCE``), as in the
CESQL TCK and the other SDKs.

Nodes are tuples whose first item names the kind:
``("lit", value)``, ``("id", name)``, ``("not", x)``, ``("neg", x)``,
``("bin", op, x, y)``, ``("like", x, pattern, negated)``, ``("exists", name)``,
``("in", x, [items], negated)``, ``("call", NAME, [args], offset)``.
"""

from __future__ import annotations

import re
from typing import Any

from headwater.cesql.errors import ParseError
from headwater.cesql.functions import int32

MAX_LENGTH = 64 * 1024
"""The longest expression accepted, in characters. Filters written by people
are a line or two; generated ones (an IN set of a thousand device ids) stay
far below. Compiling costs a few microseconds per character, so this bounds
what one expression costs to compile (about 0.1 s) wherever it comes from: a
Trigger's file, the admin API, ``headwater cesql``."""

MAX_DEPTH = 128
"""Deepest tree accepted (every operator applied counts one level, so a chain
of 128 ANDs is as deep as 128 parentheses). Deeper input is a ParseError,
never a RecursionError: compiling and evaluating recurse a few Python frames
per level, and 128 levels stay far below Python's default limit of 1000.
Filters written by people nest a handful of levels; long alternatives belong
in an IN set, which does not nest."""

KEYWORDS = frozenset({"AND", "OR", "XOR", "NOT", "LIKE", "EXISTS", "IN", "TRUE", "FALSE"})

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\n]+)
  | (?P<op>!=|<>|>=|<=|[=<>+\-*/%(),])
  | (?P<string>'(?:\\.|''|[^'\\])*'|"(?:\\.|""|[^"\\])*")
  | (?P<word>[A-Za-z0-9_]+)
    """,
    re.VERBOSE | re.DOTALL,
)
_IDENTIFIER = re.compile(r"[A-Za-z0-9]+\Z")
_DECIMAL = re.compile(r"\.[0-9]+")
_FUNCTION = re.compile(r"[A-Za-z][A-Za-z_]*\Z")

# Binding powers (higher binds tighter), spec.md 3.6.
LOGIC, COMPARE, ADD, MUL, IN, LIKE, UNARY = 1, 2, 3, 4, 5, 6, 7
_BINARY = {
    "AND": LOGIC,
    "OR": LOGIC,
    "XOR": LOGIC,
    "=": COMPARE,
    "!=": COMPARE,
    "<>": COMPARE,
    "<": COMPARE,
    "<=": COMPARE,
    ">": COMPARE,
    ">=": COMPARE,
    "+": ADD,
    "-": ADD,
    "*": MUL,
    "/": MUL,
    "%": MUL,
}

Node = tuple[Any, ...]
Token = tuple[str, str, int]  # kind, text, offset


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            char = text[pos]
            if char in "'\"":
                raise ParseError("unterminated string literal", text, pos)
            if char == "." and _DECIMAL.match(text, pos):
                raise _decimal(text, tokens, pos)
            raise ParseError(f"unexpected character {char!r}", text, pos)
        kind = m.lastgroup
        assert kind is not None
        if kind == "word":
            word = m.group()
            upper = word.upper()
            if word.isdigit():
                kind = "int"
            elif upper in KEYWORDS:
                kind, word = upper, upper
            tokens.append((kind, word, pos))
        elif kind != "space":
            tokens.append((kind, m.group(), pos))
        pos = m.end()
    tokens.append(("eof", "", len(text)))
    return tokens


def _decimal(text: str, tokens: list[Token], pos: int) -> ParseError:
    """``23.5``: CESQL v1 has no decimal numbers (2.2, 3.1), which is worth saying."""
    start = (
        tokens[-1][2]
        if tokens and tokens[-1][0] == "int" and tokens[-1][2] + len(tokens[-1][1]) == pos
        else pos
    )
    number = _DECIMAL.match(text, pos)
    assert number is not None
    written = text[start : number.end()]
    return ParseError(
        f"{written}: CESQL v1 has only integers, no decimal numbers; compare with an "
        "integer (temperature > 23), and lift whole numbers from a payload with floor() "
        "in the source's mapping (extensions: {temperature: floor(temperature)})",
        text,
        start,
    )


def unquote(literal: str) -> str:
    """The value of a string literal (spec.md 2.2).

    The delimiting quote is escaped as ``\\'`` (or ``\\"``) or doubled, as the
    lexer grammar allows. Other backslash sequences are kept as written, so
    that a LIKE pattern sees its ``\\%`` and ``\\_`` escapes (spec.md 3.4.3).
    """
    quote = literal[0]
    body = literal[1:-1]
    if "\\" not in body and quote * 2 not in body:
        return body
    out: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append(nxt if nxt == quote else char + nxt)
            i += 2
        elif char == quote:  # the first of a doubled quote
            out.append(quote)
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


class Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0
        self.depth = 0

    def error(self, message: str, token: Token | None = None) -> ParseError:
        token = token or self.tokens[self.pos]
        return ParseError(message, self.text, token[2])

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.pos + ahead, len(self.tokens) - 1)]

    def take(self) -> Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def expect(self, kind: str, text: str | None = None, what: str = "") -> Token:
        token = self.peek()
        if token[0] != kind or (text is not None and token[1] != text):
            raise self.error(f"expected {what or text or kind}, found {_describe(token)}")
        return self.take()

    def parse(self) -> Node:
        if self.peek()[0] == "eof":
            raise self.error("empty expression")
        node = self.expression(0)
        if self.peek()[0] != "eof":
            raise self.error(f"unexpected {_describe(self.peek())} after the expression")
        return node

    def expression(self, min_power: int) -> Node:
        entered = self.depth
        try:
            self.nest()
            left = self.prefix()
            while True:
                kind, text, _ = self.peek()
                negated = False
                if kind == "NOT" and self.peek(1)[0] in ("LIKE", "IN"):
                    kind, negated = self.peek(1)[0], True
                if kind == "LIKE" and min_power <= LIKE:
                    self.nest()  # each operator applied to `left` nests it one deeper
                    self.pos += 2 if negated else 1
                    pattern = self.peek()
                    if pattern[0] != "string":
                        # 3.4.3: the pattern MUST be a string literal.
                        raise self.error("the LIKE pattern must be a string literal")
                    self.take()
                    left = ("like", left, unquote(pattern[1]), negated)
                    continue
                if kind == "IN" and min_power <= IN:
                    self.nest()
                    self.pos += 2 if negated else 1
                    left = ("in", left, self.set_expression(), negated)
                    continue
                op = text if kind == "op" else kind
                power = _BINARY.get(op)
                if power is None or power < min_power:
                    return left
                self.take()
                self.nest()
                # 3.6: "MUST be evaluated left to right when the precedence is
                # equal". CESQLParser.g4 marks AND/OR/XOR <assoc=right>, which
                # would read `false AND true OR true` as false; the spec's text
                # is normative, so logic operators too associate to the left.
                right = self.expression(power + 1)
                left = ("bin", op, left, right)
        finally:
            self.depth = entered

    def nest(self) -> None:
        """One level deeper in the tree; a ParseError past MAX_DEPTH."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"expression nested deeper than {MAX_DEPTH} levels")

    def set_expression(self) -> list[Node]:
        self.expect("op", "(", "'(' to open the IN set")
        if self.peek()[:2] == ("op", ")"):
            raise self.error("an IN set needs at least one element")
        items = [self.expression(0)]
        while self.peek()[:2] == ("op", ","):
            self.take()
            items.append(self.expression(0))
        self.expect("op", ")", "',' or ')' in the IN set")
        return items

    def prefix(self) -> Node:
        token = self.take()
        kind, text, offset = token
        if kind == "NOT":
            return ("not", self.expression(UNARY))
        if kind == "op" and text in "+-" and text:
            nxt = self.peek()
            if nxt[0] == "int" and nxt[2] == offset + 1:
                # An integer literal with its sign (2.2): -2147483648 is valid.
                self.take()
                return ("lit", self.integer(text + nxt[1], token))
            if text == "+":
                raise self.error("'+' must be followed directly by digits", token)
            return ("neg", self.expression(UNARY))
        if kind == "op" and text == "(":
            node = self.expression(0)
            self.expect("op", ")", "')'")
            return node
        if kind == "int":
            return ("lit", self.integer(text, token))
        if kind == "string":
            return ("lit", unquote(text))
        if kind in ("TRUE", "FALSE"):
            return ("lit", kind == "TRUE")
        if kind == "EXISTS":
            name = self.take()
            if name[0] != "word" or not _IDENTIFIER.match(name[1]):
                raise self.error(f"EXISTS needs an attribute name, found {_describe(name)}", name)
            return ("exists", name[1].lower())
        if kind == "word":
            if self.peek()[:2] == ("op", "("):
                if not _FUNCTION.match(text):
                    raise self.error(f"{text!r} is not a valid function name", token)
                return self.call(text.upper(), offset)
            if not _IDENTIFIER.match(text):
                raise self.error(
                    f"{text!r} is not a valid attribute name (letters and digits)", token
                )
            # CloudEvents attribute names are lower-case, so `SOURCE` can only
            # mean `source`: the CESQL TCK and the other SDKs read it so.
            return ("id", text.lower())
        raise self.error(f"expected a value, found {_describe(token)}", token)

    def call(self, name: str, offset: int) -> Node:
        self.take()  # "("
        args: list[Node] = []
        if self.peek()[:2] != ("op", ")"):
            args.append(self.expression(0))
            while self.peek()[:2] == ("op", ","):
                self.take()
                args.append(self.expression(0))
        self.expect("op", ")", f"',' or ')' in the arguments of {name}")
        return ("call", name, args, offset)

    def integer(self, digits: str, token: Token) -> int:
        # 2.2: "Integer literals MUST be valid 32 bit signed integer values."
        try:
            return int32(digits)
        except ValueError:
            shown = digits if len(digits) <= 24 else f"{digits[:12]}...({len(digits)} digits)"
            raise self.error(
                f"integer literal {shown} is outside the 32-bit range", token
            ) from None


def _describe(token: Token) -> str:
    kind, text, _ = token
    if kind == "eof":
        return "the end of the expression"
    return repr(text)


def parse(text: str) -> Node:
    if not isinstance(text, str):
        raise TypeError(f"a CESQL expression is a str, not {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ParseError(
            f"the expression is {len(text)} characters long, over the limit of {MAX_LENGTH}",
            text,
            MAX_LENGTH,
        )
    return Parser(text).parse()
