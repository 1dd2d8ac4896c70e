"""Peak memory and time of the KD loss at a large vocabulary: dense vs chunked (``kd_loss(chunk_size=)``).

Each contender runs forward + backward of ``rtd_lab.losses.kd_loss`` on random (N, V) logits in a
process of its own; the peak resident memory above the inputs (``ru_maxrss`` after the step minus
after building the inputs) is what the loss itself needed. Several repetitions, medians, side by
side in one table: ``python benchmarks/kd_memory.py [--vocab 150000 --tokens 512 --reps 3]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(vocab: int, tokens: int, chunk: int | None) -> dict:
    import torch

    from rtd_lab.losses import kd_loss

    torch.manual_seed(0)
    s = torch.randn(1, tokens, vocab, requires_grad=True)
    t = torch.randn(1, tokens, vocab)
    labels = torch.randint(0, vocab, (1, tokens))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    loss = kd_loss(s, t, labels, chunk_size=chunk).loss
    loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_above_inputs_mb": (peak - base) / 1024, "seconds": seconds, "loss": float(loss)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=150_000)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--chunks", default="none,256,64")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child is not None:
        chunk = None if a.child == "none" else int(a.child)
        print(json.dumps(child(a.vocab, a.tokens, chunk)))
        return
    rows = {}
    for name in a.chunks.split(","):
        runs = []
        for _ in range(a.reps):
            cmd = [sys.executable, __file__, "--child", name, "--vocab", str(a.vocab), "--tokens", str(a.tokens)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
        rows[name] = {
            "peak_above_inputs_mb": statistics.median(r["peak_above_inputs_mb"] for r in runs),
            "seconds": statistics.median(r["seconds"] for r in runs),
            "loss": runs[0]["loss"],
        }
    dense = rows["none"] if "none" in rows else next(iter(rows.values()))
    size_mb = a.tokens * a.vocab * 4 / 2**20
    lines = [
        f"KD loss forward + backward, {a.tokens} supervised tokens x {a.vocab:,} vocabulary "
        f"(one float32 (N, V) tensor = {size_mb:.0f} MB), median of {a.reps} processes each:",
        "",
        "| chunk_size | peak memory above inputs | / dense | seconds | / dense | loss |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        mb, dense_mb = r["peak_above_inputs_mb"], dense["peak_above_inputs_mb"]
        lines.append(
            f"| {name} | {mb:.0f} MB | {mb / dense_mb:.2f} "
            f"| {r['seconds']:.2f} | {r['seconds'] / dense['seconds']:.2f} | {r['loss']:.6f} |"
        )
    text = "\n".join(lines) + "\n"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kd_memory.json").write_text(json.dumps({"vocab": a.vocab, "tokens": a.tokens, "rows": rows}, indent=2))
    (out / "kd_memory.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
