"""SAMPLE throughput: batched generation with the KV cache vs one sequence at a time.

    python benchmarks/sampling.py                 # (make bench) the default teacher, CPU
    python benchmarks/sampling.py --device cuda   # on a GPU

Both modes run ``rtd_lab.traces.sample.sample_chunk`` (what ``task=sample`` runs) on the default
teacher (trained once and cached, as every run does) over training questions of every depth:
batched = ``--batch`` prompts per ``generate()`` call, each expanded to ``--n-samples`` sequences;
one at a time = one prompt, one sequence per call. Each mode is timed ``--reps`` times after a
warm-up in this one process; the table reports medians, sequences/s and generated tokens/s, and
the ratio. Writes ``benchmarks/results/sampling.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

from rtd_lab.models.provision import prepare_teacher
from rtd_lab.tasks.settings import build_context, teacher_settings
from rtd_lab.traces.sample import sample_chunk

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, reps: int) -> tuple[float, list]:
    fn()  # warm-up: allocator, kernels, tokenizer caches
    times, out = [], None
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, default=256, help="questions for the batched mode")
    p.add_argument("--n-samples", type=int, default=4)
    p.add_argument("--batch", type=int, default=256, help="prompts per generate() call, batched mode")
    p.add_argument("--single-questions", type=int, default=48, help="sequences for the one-at-a-time mode")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()

    with initialize_config_dir(config_dir=str(ROOT / "rtd_lab" / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["logger=csv", "trainer.enable_progress_bar=false"])
    with open_dict(cfg):
        cfg.paths.cache_dir = os.environ.get("RTD_LAB_CACHE", str(ROOT / ".cache" / "rtd_lab"))
        cfg.paths.output_dir = str(Path(args.out) / "_run")
    benchmark = instantiate(cfg.data.benchmark)
    teacher, tokenizer, _ = prepare_teacher(teacher_settings(cfg.teacher), build_context(cfg), benchmark)
    model = teacher.model.to(args.device)
    train = benchmark.splits()["train"]
    questions = train[:: len(train) // args.questions][: args.questions]  # every depth
    singles = train[:: len(train) // args.single_questions][: args.single_questions]

    def run(examples, n, batch):
        return sample_chunk(model, tokenizer, benchmark, examples, args.temperature, n, batch, seed=0)

    def tokens(rows) -> int:
        return sum(len(tokenizer(r["completion"], add_special_tokens=False)["input_ids"]) + 1 for r in rows)  # + eos

    modes = {}
    for name, examples, n, batch, reps in (
        ("batched (KV cache)", questions, args.n_samples, args.batch, args.reps),
        ("one at a time (KV cache)", singles, 1, 1, max(1, args.reps // 2)),
    ):
        seconds, rows = timed(lambda e=examples, n=n, b=batch: run(e, n, b), reps)
        modes[name] = {
            "sequences": len(rows),
            "median_seconds": round(seconds, 3),
            "sequences_per_s": round(len(rows) / seconds, 1),
            "tokens_per_s": round(tokens(rows) / seconds, 1),
            "reps": reps,
        }
    batched, single = modes["batched (KV cache)"], modes["one at a time (KV cache)"]
    result = {
        "modes": modes,
        "speedup_sequences_per_s": round(batched["sequences_per_s"] / single["sequences_per_s"], 1),
        "settings": vars(args),
        "machine": {
            "device": args.device,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    lines = [
        f"SAMPLE throughput, default teacher, T = {args.temperature}, {args.device} "
        f"({os.cpu_count()} cores, torch {torch.__version__}); median of the timed repetitions",
        "",
        "| mode | sequences | median s | sequences/s | tokens/s |",
        "|---|---|---|---|---|",
    ]
    for name, m in modes.items():
        lines.append(
            f"| {name} | {m['sequences']} | {m['median_seconds']} | {m['sequences_per_s']} | {m['tokens_per_s']} |"
        )
    lines += ["", f"batched / one at a time: **{result['speedup_sequences_per_s']}x** sequences per second"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sampling.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "sampling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
