"""Worst-case time of the text parsers on hostile and random inputs of up to 1,000 characters.

    python benchmarks/parsing.py            # (make bench) writes benchmarks/results/parsing.{json,md}

Every number read from model or dataset text goes through ``rtd_lab.traces.numbers`` and the
parsers around it; the bar is ≤ 10 ms per call for inputs up to 1,000 characters (the tests only
check that no call raises or hangs). Each parser runs on a fixed set of inputs — the hostile strings
of ``tests/test_faults.py`` cut to 1,000 characters, long digit runs, deep parentheses, long
equation chains, and seeded random strings over digits, operators, ``e`` and letters — ``--reps``
times; the table reports, per parser, the median over inputs and the maximum over inputs of the
per-input median time.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

from rtd_lab.data.gsm8k import parse_completion as gsm8k_parse_completion
from rtd_lab.prm import step_value
from rtd_lab.traces.answers import extract_answer, normalize_number
from rtd_lab.traces.arith import check_annotations, evaluate
from rtd_lab.traces.filter import reasoning_path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 1000


def inputs(seed: int = 0, n_random: int = 200) -> list[str]:
    fixed = [
        "<<2=Infinity>>", "<<1=1e9999999>>", "<<3=sNaN>>", "#### NaN", "#### 1e5000", "#### " + "9" * 995,
        "<<" + "(" * 480 + "1" + ")" * 480 + "=1>>", "<<" + "-" * 990 + "1=1>>", "1+" * 500, "1 + 1 = 2 " * 100,
        "9" * 1000, "9" * 990 + "e5", "1," * 500, "1.5e3 " * 160, "=" * 1000, "<<" * 500, "The answer is " + "1" * 980,
    ]  # fmt: skip
    rng = random.Random(seed)
    alphabet = "0123456789+-*/()=.,e$ <>#A:xE"
    rand = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, LIMIT))) for _ in range(n_random)]
    return [t[:LIMIT] for t in fixed + rand]


def _evaluate(text: str) -> None:
    try:
        evaluate(text)
    except ValueError:
        pass


PARSERS = {
    "normalize_number": normalize_number,
    "extract_answer": extract_answer,
    "check_annotations": check_annotations,
    "arith.evaluate": _evaluate,
    "gsm8k.parse_completion": gsm8k_parse_completion,
    "prm.step_value": step_value,
    "filter.reasoning_path": reasoning_path,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    texts = inputs()
    rows = {}
    for name, fn in PARSERS.items():
        per_input = []
        for text in texts:
            fn(text)  # warm-up (regex compilation caches)
            times = []
            for _ in range(args.reps):
                start = time.perf_counter()
                fn(text)
                times.append(time.perf_counter() - start)
            per_input.append(statistics.median(times))
        worst = max(range(len(texts)), key=per_input.__getitem__)
        rows[name] = {
            "median_ms": 1e3 * statistics.median(per_input),
            "max_ms": 1e3 * per_input[worst],
            "slowest_input": texts[worst][:60],
        }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(), "inputs": len(texts), "reps": args.reps}
    (out / "parsing.json").write_text(json.dumps({"meta": meta, "parsers": rows}, indent=2) + "\n")
    lines = [
        f"Text parsers, {len(texts)} inputs of ≤ {LIMIT} characters, median of {args.reps} calls each "
        f"({meta['machine']}, Python {meta['python']}); bar: ≤ 10 ms per call.",
        "",
        "| parser | median over inputs (ms) | slowest input (ms) | slowest input starts |",
        "|---|---|---|---|",
    ]
    lines += [f"| {k} | {v['median_ms']:.3f} | {v['max_ms']:.3f} | `{v['slowest_input']!r}` |" for k, v in rows.items()]
    (out / "parsing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
