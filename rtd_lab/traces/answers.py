"""Final-answer extraction and comparison, by the conventions results are usually compared with.

Order of precedence (the first that matches wins):

  1. GSM8K's ``#### N``                      (the gold solutions, our synthetic traces)
  2. ``The answer is N``                     (chain-of-thought prompting, Wei et al.)
  3. ``A: N`` at the start of a line         (the GSM8K model solutions' final line)
  4. the last number anywhere in the text    (the common fallback)

A number is normalised before comparison: thousands commas, ``$`` and a trailing ``.`` are dropped
(``$1,200.`` → ``1200``), and two answers are equal when they are equal as exact decimals
(``18.0`` == ``18``; ``1/2`` is read as a fraction). Nothing is ever evaluated as code.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

_NUM = r"-?\$?\s?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\$?\.\d+"
PATTERNS = (
    ("####", re.compile(rf"####\s*({_NUM})")),
    ("the answer is", re.compile(rf"[Tt]he (?:final )?answer is[:\s]*({_NUM})")),
    ("A:", re.compile(rf"(?m)^\s*A:\s*({_NUM})")),
)
_ANY_NUMBER = re.compile(_NUM)


def normalize_number(text: str) -> str | None:
    """``"$1,200."`` → ``"1200"``; ``"18.50"`` → ``"18.5"``; ``"3/4"`` → ``"3/4"``; None if not a number."""
    s = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        if "/" in s:
            value = Fraction(s)
            return str(value) if value.denominator != 1 else str(value.numerator)
        d = Decimal(s)
    except (InvalidOperation, ValueError, ZeroDivisionError):
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def extract_answer(text: str) -> tuple[str | None, str | None]:
    """(normalised answer, the convention that found it) — (None, None) when there is no number."""
    for name, pattern in PATTERNS:
        matches = pattern.findall(text)
        if matches:
            return normalize_number(matches[-1]), name
    numbers = _ANY_NUMBER.findall(text)
    if numbers:
        return normalize_number(numbers[-1]), "last number"
    return None, None


def same_answer(a: str | None, b: str | None) -> bool:
    """Equal as exact numbers (fractions and decimals compared by value)."""
    if a is None or b is None:
        return False
    try:
        return Fraction(a) == Fraction(b)
    except (ValueError, ZeroDivisionError):
        return a == b
