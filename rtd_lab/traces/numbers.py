"""The one bounded parser for every number read from model or dataset text.

Model completions and data files are untrusted: ``1e9999999`` (10 characters) makes ``int(Decimal(s))``
build a ten-million-digit integer (minutes), ``sNaN`` / ``Infinity`` make ``Decimal`` comparisons and
``int`` raise, and Python refuses ``str(int)`` beyond 4,300 digits. So a number is read here, and only
here, by a strict grammar with bounds, before any arithmetic:

    number := [sign] digits ["." digits] [("e" | "E") [sign] digits]     (or [sign] "." digits ...)
            | [sign] digits "/" digits                                              (a fraction)

at most ``MAX_CHARS`` characters and a decimal exponent of at most ``MAX_EXPONENT`` in size. Anything
else — NaN, infinities, names, huge exponents, over-long digit strings — is "not a number": ``None``,
which callers score as a wrong answer. No exception, and every call is O(length) on a bounded length.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_CHARS = 100  # longer than any quantity a GSM8K solution states; the bound keeps every call cheap
MAX_EXPONENT = 100  # |e| of scientific notation: 10**100 is cheap exact arithmetic, 10**9999999 is not

_DECIMAL = re.compile(r"([+-]?)(\d*)(?:\.(\d+))?(?:[eE]([+-]?\d{1,4}))?")
_FRACTION = re.compile(r"([+-]?\d+)/(\d+)")


def parse_number(text: str) -> Fraction | None:
    """The exact value of ``text`` (already stripped of ``$`` and thousands commas), or None."""
    if not isinstance(text, str) or not text or len(text) > MAX_CHARS:
        return None
    m = _FRACTION.fullmatch(text)
    if m:
        den = int(m.group(2))
        return Fraction(int(m.group(1)), den) if den else None
    m = _DECIMAL.fullmatch(text)
    if not m or not (m.group(2) or m.group(3)):
        return None
    sign, whole, frac, exp = m.groups()
    exponent = int(exp) if exp else 0
    if abs(exponent) > MAX_EXPONENT:
        return None
    frac = frac or ""
    value = Fraction(int((whole or "0") + frac), 10 ** len(frac))
    value *= Fraction(10) ** exponent
    return -value if sign == "-" else value


def canonical(value: Fraction, as_fraction: bool = False) -> str:
    """``Fraction(37, 2)`` → ``"18.5"``; an integer → ``"18"``; a non-terminating decimal or
    ``as_fraction`` → ``"p/q"``."""
    if value.denominator == 1:
        return str(value.numerator)
    den, twos, fives = value.denominator, 0, 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    if as_fraction or den != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    scaled = abs(value.numerator) * 10**places // value.denominator
    digits = str(scaled).rjust(places + 1, "0")
    text = f"{digits[:-places]}.{digits[-places:]}".rstrip("0").rstrip(".")
    return "-" + text if value < 0 else text


def normalize_number(text: str) -> str | None:
    """``"$1,200."`` → ``"1200"``; ``"18.50"`` → ``"18.5"``; ``"3/4"`` → ``"3/4"``; None if not a number."""
    if not isinstance(text, str) or len(text) > 4 * MAX_CHARS:
        return None
    s = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    value = parse_number(s)
    if value is None:
        return None
    return canonical(value, as_fraction="/" in s)
