"""Decoding time: ``rtd_lab.models.decode`` against ``transformers``' ``generate``, on the default models.

    python benchmarks/decoding.py            # (make bench) default student and teacher, CPU

The calls rtd_lab makes: step_reward's draw (the student, one sample per question of a training
batch, T = 1), its rollouts (``method.rollout_every=4``: four samples per question in one call),
the evaluator (greedy, a validation / test batch), and SAMPLE (the teacher, T = 1, 256 prompts).
The student is the default run's starting point (its base checkpoint, pretrained on a sibling
world: its traces are shorter than a trained student's), the teacher the trained default one.
Each case decodes the same prompts from the same random state with both, checks that they return
the same tokens, and times them side by side in this one process, ``--reps`` times with the order
reversed every other repetition; medians. Writes ``benchmarks/results/decoding.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict
from transformers import GenerationConfig

from rtd_lab.data.batch import Collator, encode_example
from rtd_lab.models.decode import decode
from rtd_lab.models.provision import prepare_student, prepare_teacher
from rtd_lab.tasks.settings import build_context, student_settings, teacher_settings

ROOT = Path(__file__).resolve().parents[1]


def prompts(examples, tokenizer, fmt, rows: int, copies: int = 1):
    """``rows`` prompts spread evenly over ``examples`` (the splits are ordered by depth: every depth)."""
    chosen = examples[:: max(1, len(examples) // rows)][:rows]
    batch = Collator(tokenizer.pad_token_id)([encode_example(ex, tokenizer, fmt) for ex in chosen])
    return batch["prompt_ids"].repeat(copies, 1), batch["prompt_mask"].repeat(copies, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()

    with initialize_config_dir(config_dir=str(ROOT / "rtd_lab" / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["logger=csv"])
    with open_dict(cfg):
        cfg.paths.cache_dir = os.environ.get("RTD_LAB_CACHE", str(ROOT / ".cache" / "rtd_lab"))
        cfg.paths.output_dir = str(Path(args.out) / "_run")
    data = instantiate(cfg.data)
    benchmark, ctx = data.benchmark, build_context(cfg)
    teacher, tokenizer, _ = prepare_teacher(teacher_settings(cfg.teacher), ctx, benchmark)
    L.seed_everything(0)
    student = prepare_student(student_settings(cfg.student), ctx, tokenizer, teacher, 0).eval()
    train, test = benchmark.splits()["train"], benchmark.splits()["test"]
    max_new, eos, pad = benchmark.max_completion_tokens(), tokenizer.eos_token_id, tokenizer.pad_token_id
    batch, eval_batch = cfg.data.batch_size, cfg.data.eval_batch_size
    fmt = benchmark.format
    cases = [  # name, model, (ids, mask), sample?
        (f"step_reward draw: student, {batch} rows, T = 1", student, prompts(train, tokenizer, fmt, batch), True),
        (f"step_reward rollout_every=4: student, {4 * batch} rows, T = 1", student,
         prompts(train, tokenizer, fmt, batch, 4), True),
        (f"evaluation: student, {eval_batch} rows, greedy", student, prompts(test, tokenizer, fmt, eval_batch), False),
        (f"evaluation: teacher, {eval_batch} rows, greedy", teacher.model, prompts(test, tokenizer, fmt, eval_batch),
         False),
        ("SAMPLE: teacher, 256 rows, T = 1", teacher.model, prompts(train, tokenizer, fmt, 256), True),
    ]  # fmt: skip

    def hf(model, ids, mask, sample):
        gen = GenerationConfig(
            do_sample=sample,
            temperature=1.0 if sample else None,
            top_k=0 if sample else None,
            max_new_tokens=max_new,
            pad_token_id=pad,
            eos_token_id=eos,
        )
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)

    def lean(model, ids, mask, sample):
        return decode(model, ids, mask, max_new, eos, pad, do_sample=sample)

    rows = []
    for name, model, (ids, mask), sample in cases:
        torch.manual_seed(0)
        a = hf(model, ids, mask, sample)
        torch.manual_seed(0)
        b = lean(model, ids, mask, sample)
        times = {"generate": [], "decode": []}
        contenders = [("generate", hf), ("decode", lean)]
        for rep in range(args.reps):
            for label, fn in contenders if rep % 2 == 0 else contenders[::-1]:
                torch.manual_seed(rep)
                start = time.perf_counter()
                fn(model, ids, mask, sample)
                times[label].append(time.perf_counter() - start)
        g, d = statistics.median(times["generate"]), statistics.median(times["decode"])
        rows.append(
            {
                "case": name,
                "rows": ids.size(0),
                "new_tokens": a.size(1) - ids.size(1),
                "same_tokens": bool(a.shape == b.shape and torch.equal(a, b)),
                "generate_ms": round(1000 * g, 1),
                "decode_ms": round(1000 * d, 1),
                "decode_over_generate": round(d / g, 2),
            }
        )
        print(rows[-1])
    result = {
        "cases": rows,
        "settings": vars(args),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    lines = [
        f"Decoding, rtd_lab.models.decode vs transformers generate, default models, CPU ({os.cpu_count()} "
        f"cores, {torch.get_num_threads()} threads, torch {torch.__version__}); medians of {args.reps} "
        "repetitions side by side",
        "",
        "| call | rows | new tokens | same tokens | generate ms | decode ms | decode / generate |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['rows']} | {r['new_tokens']} | {r['same_tokens']} | {r['generate_ms']} | "
            f"{r['decode_ms']} | {r['decode_over_generate']} |"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decoding.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "decoding.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
