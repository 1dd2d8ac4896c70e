"""Training-step time: RTD / standard KD (online teacher), and rtd_lab's KD step / a hand-written loop.

    python benchmarks/step_time.py            # (make bench) default teacher and student, CPU

All in one process, on the same fixed batches of the default benchmark. "rtd_lab" is the real
thing: the method's LightningModule under a Lightning Trainer configured as ``conf/trainer`` does
(gradient clipping 1.0, logging every 25 steps, no validation, no checkpoints). "hand-written" is
a plain PyTorch loop doing the same math on the same batches: student and teacher forward, the
same ``LogitKD`` (shift + ``kd_loss``), backward, clipping, AdamW, the warm-up + cosine schedule. Each timing is a whole
``--steps``-step run (Trainer start-up included), repeated ``--reps`` times; medians are reported.
Writes ``benchmarks/results/step_time.{json,md}``. The offline teacher cache (issue 6) is not
built yet, so RTD / KD is measured with the teacher in the loop only.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from torch.utils.data import DataLoader

from rtd_lab.optim import warmup_cosine
from rtd_lab.train import prepare_student, prepare_teacher

ROOT = Path(__file__).resolve().parents[1]


def build(experiment: str, cache_dir: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"+experiment={experiment}", "curriculum=none", "logger=csv"])
    with open_dict(cfg):
        cfg.paths.cache_dir, cfg.paths.output_dir = cache_dir, str(ROOT / "benchmarks" / "results" / "_run")
    dm = instantiate(cfg.data)
    teacher, tokenizer, _ = prepare_teacher(cfg, dm.benchmark)
    L.seed_everything(0)
    student = prepare_student(cfg, tokenizer, teacher)
    dm.connect(tokenizer)
    method = OmegaConf.to_container(cfg.method, resolve=True)
    method.pop("name")
    module = instantiate(
        method,
        student=student,
        teacher=teacher,
        evaluator=None,
        optimizer=instantiate(cfg.optim.optimizer),
        scheduler=instantiate(cfg.optim.scheduler),
    )
    return cfg, dm, module


def lightning_run(module, batches, steps: int) -> float:
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        gradient_clip_val=1.0,
        log_every_n_steps=25,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(copy.deepcopy(module), train_dataloaders=DataLoader(batches, batch_size=None))
    return time.perf_counter() - start


def hand_run(module, batches, steps: int, cfg) -> float:
    student, teacher = copy.deepcopy(module.student), module.teacher.model
    kd = module.kd  # LogitKD: the method's settings and the causal shift around losses.kd_loss
    start = time.perf_counter()
    opt = torch.optim.AdamW(
        student.parameters(), lr=cfg.optim.optimizer.lr, weight_decay=cfg.optim.optimizer.weight_decay
    )
    sched = warmup_cosine(opt, steps, cfg.optim.scheduler.warmup_ratio, cfg.optim.scheduler.min_lr_ratio)
    student.train()
    for batch in batches[:steps]:
        logits = student(input_ids=batch["input_ids"], use_cache=False).logits
        with torch.no_grad():
            t_logits = teacher(input_ids=batch["input_ids"], use_cache=False).logits
        loss = kd(logits, t_logits, batch["labels"]).loss  # the shift + kd_loss, a pure function
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        sched.step()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    cache = os.environ.get("RTD_LAB_CACHE", str(ROOT / ".cache" / "rtd_lab"))
    cfg, dm, kd_module = build("standard_kd", cache)
    _, _, rtd_module = build("rtd", cache)
    loader = iter(dm.train_dataloader())
    batches = [next(loader) for _ in range(args.steps)]  # the same batches for every contender
    for b in batches:
        b.pop("examples", None)  # python objects: not part of the math

    runs = {"rtd_lab standard_kd": [], "hand-written standard_kd": [], "rtd_lab rtd": []}
    lightning_run(kd_module, batches, 5)  # warm-up: allocator, kernels, Lightning imports
    for _ in range(args.reps):  # interleaved, so drift in machine load hits all three alike
        runs["rtd_lab standard_kd"].append(lightning_run(kd_module, batches, args.steps))
        runs["hand-written standard_kd"].append(hand_run(kd_module, batches, args.steps, cfg))
        runs["rtd_lab rtd"].append(lightning_run(rtd_module, batches, args.steps))
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "seconds_per_step": {k: v / args.steps for k, v in med.items()},
        "rtd_over_kd_online": med["rtd_lab rtd"] / med["rtd_lab standard_kd"],
        "framework_over_hand_written": med["rtd_lab standard_kd"] / med["hand-written standard_kd"],
        "runs_seconds": runs,
        "settings": vars(args) | {"batch_size": cfg.data.batch_size, "threads": torch.get_num_threads()},
    }
    lines = [
        f"Training-step time, default models, batch {cfg.data.batch_size}, CPU ({os.cpu_count()} cores), "
        f"{args.steps}-step runs incl. start-up, median of {args.reps}",
        "",
        "| contender | ms / step |",
        "|---|---|",
        *[f"| {k} | {1000 * v:.1f} |" for k, v in result["seconds_per_step"].items()],
        "",
        f"RTD / standard KD (teacher online): **{result['rtd_over_kd_online']:.2f}**",
        f"rtd_lab standard KD / hand-written loop: **{result['framework_over_hand_written']:.2f}**",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step_time.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "step_time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
