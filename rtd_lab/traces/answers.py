"""Final-answer extraction and comparison, by the conventions results are usually compared with.

Order of precedence (the first that matches wins):

  1. GSM8K's ``#### N``                      (the gold solutions, our synthetic traces)
  2. ``The answer is N``                     (chain-of-thought prompting, Wei et al.)
  3. ``A: N`` at the start of a line         (the GSM8K model solutions' final line)
  4. the last number anywhere in the text    (the common fallback)

A number is normalised before comparison: thousands commas, ``$`` and a trailing ``.`` are dropped
(``$1,200.`` → ``1200``), and two answers are equal when they are equal as exact decimals
(``18.0`` == ``18``; ``1/2`` is read as a fraction). Numbers are read by the one bounded parser,
``rtd_lab.traces.numbers``: NaN, infinities and huge exponents are not numbers. Nothing is ever
evaluated as code.

That is the ``lenient`` answer mode. ``strict`` and ``flexible`` reproduce lm-evaluation-harness's two
GSM8K columns (its ``strict-match`` and ``flexible-extract`` filters, then ``exact_match`` with the
task's ``regexes_to_ignore`` and ``ignore_case``): ``#### 18.0``, ``#### $1,200`` and ``the answer is
7`` are right in lenient mode and wrong under lm-eval's strict match (``answer_in_mode``).
"""

from __future__ import annotations

import re

from rtd_lab.traces.numbers import normalize_number, parse_number

# A number in text: not the tail of a word or of another number (lookbehind), never the mantissa of
# scientific notation ("1e5000" is not "1"; lookahead), and possessive, so no backtracking into long
# digit strings.
_NUM = r"(?<![\w.])(?:-?\$?\s?\d[\d,]*+(?:\.\d+)?+(?:/\d+)?+|-?\$?\.\d++)(?![eE][+-]?\d)"
PATTERNS = (
    ("####", re.compile(rf"####\s*({_NUM})")),
    ("the answer is", re.compile(rf"[Tt]he (?:final )?answer is[:\s]*({_NUM})")),
    ("A:", re.compile(rf"(?m)^\s*A:\s*({_NUM})")),
)
_ANY_NUMBER = re.compile(_NUM)


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
    """Equal as exact numbers (fractions and decimals compared by value); a non-number equals nothing."""
    x, y = parse_number(a), parse_number(b)
    return x is not None and x == y


# lm-evaluation-harness's GSM8K task (lm_eval/tasks/gsm8k/gsm8k.yaml): its two filters and the
# normalisation its exact_match applies to prediction and reference alike.
ANSWER_MODES = ("lenient", "strict", "flexible")
LM_EVAL_FILTERS = {
    "strict": (re.compile(r"#### (\-?[0-9\.\,]+)"), 0),  # the first match
    "flexible": (re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)"), -1),  # the last match
}
LM_EVAL_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")
LM_EVAL_INVALID = "[invalid]"


def lm_eval_normalize(text: str) -> str:
    for pattern in LM_EVAL_IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def answer_in_mode(text: str, mode: str) -> str | None:
    """The final answer of ``text`` as ``mode`` reads it, ready for string comparison with a gold
    answer read the same way (``lenient``: ``extract_answer``'s normalised number; ``strict`` /
    ``flexible``: lm-eval's filtered and normalised string, ``[invalid]`` when its regex finds nothing)."""
    if mode == "lenient":
        return extract_answer(text)[0]
    if mode not in LM_EVAL_FILTERS:
        raise ValueError(f"answer_mode must be one of {list(ANSWER_MODES)}, got {mode!r}")
    pattern, select = LM_EVAL_FILTERS[mode]
    matches = pattern.findall(text)
    if not matches:
        return LM_EVAL_INVALID
    match = matches[select]
    if isinstance(match, tuple):  # several groups: the first that matched
        match = next((m for m in match if m), LM_EVAL_INVALID)
    return lm_eval_normalize(match.strip())
