"""Rule-based step segmenters: a completion's text → the character offsets at which steps end.

    lines        every non-empty line is a step (GSM8K's solutions)
    calculator   a step ends after each GSM8K calculator annotation's result: "<<48/2=24>>24"
    sentences    a step ends at . ! ? followed by a space or the end (decimals are not sentence ends)
    separators   the benchmark's own step separator and answer marker (" ; ", " #### ")

``data.boundaries=<rule>`` trains with them; the learned segmenter is ``rtd_lab.traces.segment``.
"""

from __future__ import annotations

import re


def segment_lines(text: str) -> list[int]:
    ends, pos = [], 0
    for line in text.split("\n"):
        stripped = line.rstrip()
        if stripped.strip():
            ends.append(pos + len(stripped) - 1)
        pos += len(line) + 1
    return ends


_CALC = re.compile(r"<<[^<>]*=[^<>]*>>\s*\$?(-?[\d.,]*\d)")


def segment_calculator(text: str) -> list[int]:
    return [m.end(1) - 1 for m in _CALC.finditer(text)]


_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def segment_sentences(text: str) -> list[int]:
    return [m.start() for m in _SENTENCE_END.finditer(text)]


def segment_separators(text: str, fmt) -> list[int]:
    """Ends of the steps as the benchmark writes them: before each separator and the answer marker."""
    body = text.split(fmt.answer_prefix.strip(), 1)[0]
    sep = fmt.step_sep.strip() or fmt.step_sep  # " ; " splits on ";", GSM8K's "\n" on itself
    ends, pos = [], 0
    for part in body.split(sep):
        if part.strip():
            ends.append(pos + len(part.rstrip()) - 1)
        pos += len(part) + len(sep)
    return ends


RULES = ("lines", "calculator", "sentences", "separators")


def rule_boundaries(rule: str, text: str, fmt) -> list[int]:
    if rule == "lines":
        return segment_lines(text)
    if rule == "calculator":
        return segment_calculator(text)
    if rule == "sentences":
        return segment_sentences(text)
    if rule == "separators":
        return segment_separators(text, fmt)
    raise ValueError(f"data.boundaries must be gold, learned or one of {list(RULES)}, got {rule!r}")
