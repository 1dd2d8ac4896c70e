"""Safe verification of the arithmetic inside traces: GSM8K's calculator annotations ``<<48/2=24>>``.

A small recursive-descent parser over numbers, ``+ - * / //``, unary signs and parentheses,
computing with exact fractions — never ``eval``. Anything else (names, ``**``, calls) is a
``ValueError``. (GSM8K's annotations were written for a Python calculator: a few use ``//``.)
The input is bounded (``MAX_CHARS`` characters, ``MAX_DEPTH`` nested parentheses), so model text can
neither exhaust the recursion nor build huge numbers: beyond the bounds is a ``ValueError`` too.

    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/" | "//") factor)*
    factor := ("-" | "+") factor | "(" expr ")" | number
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

MAX_CHARS = 1000
MAX_DEPTH = 50
_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|(//|.))")
ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>]*)>>")


def _tokens(text: str) -> list[str]:
    if len(text) > MAX_CHARS:
        raise ValueError(f"expression longer than {MAX_CHARS} characters")
    out, depth = [], 0
    for number, op in _TOKEN.findall(text):
        if number:
            out.append(number)
        elif op.strip():
            if op not in ("+", "-", "*", "/", "//", "(", ")"):
                raise ValueError(f"unsupported character {op!r} in {text[:80]!r}")
            depth += (op == "(") - (op == ")")
            if depth > MAX_DEPTH:
                raise ValueError(f"more than {MAX_DEPTH} nested parentheses")
            out.append(op)
    return out


def evaluate(text: str) -> Fraction:
    """The exact value of an arithmetic expression (``"48/2"`` → 24). Raises ValueError if malformed."""
    tokens = _tokens(text.replace(",", ""))
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError(f"unexpected end of {text!r}")
        pos += 1
        return tokens[pos - 1]

    def expr() -> Fraction:
        value = term()
        while peek() in ("+", "-"):
            value = value + term() if take() == "+" else value - term()
        return value

    def term() -> Fraction:
        value = factor()
        while peek() in ("*", "/", "//"):
            op = take()
            if op == "*":
                value *= factor()
                continue
            divisor = factor()
            if divisor == 0:
                raise ValueError(f"division by zero in {text[:80]!r}")
            value = value / divisor if op == "/" else Fraction(value // divisor)
        return value

    def factor() -> Fraction:
        tok, negate = take(), False
        while tok in ("-", "+"):  # a loop, not recursion: "------5" must not exhaust the stack
            negate, tok = negate ^ (tok == "-"), take()
        if tok == "(":
            value = expr()
            if take() != ")":
                raise ValueError(f"unbalanced parentheses in {text[:80]!r}")
        elif tok in ("*", "/", "//", ")"):
            raise ValueError(f"unexpected {tok!r} in {text[:80]!r}")
        else:
            value = Fraction(tok)
        return -value if negate else value

    value = expr()
    if pos != len(tokens):
        raise ValueError(f"unexpected {tokens[pos]!r} in {text[:80]!r}")
    return value


@dataclass(frozen=True)
class Check:
    expression: str
    claimed: str
    correct: bool | None  # None: the annotation could not be parsed


def check_annotations(text: str, rel_tol: float = 1e-4) -> list[Check]:
    """Verify every ``<<expr=result>>`` in ``text``; a result may be rounded (GSM8K rounds some)."""
    checks = []
    for expression, claimed in ANNOTATION.findall(text):
        try:
            value, stated = evaluate(expression), evaluate(claimed)
        except ValueError:
            checks.append(Check(expression, claimed, None))
            continue
        tol = Fraction(rel_tol) * max(1, abs(value))  # exact: a float of a huge difference would overflow
        checks.append(Check(expression, claimed, abs(value - stated) <= tol or round(value, 2) == stated))
    return checks
