"""Training-step time: RTD / standard KD (teacher online and cached), rtd_lab's KD step / a hand-written
loop, the offline cache's size per token, and the peak memory of training.

    python benchmarks/step_time.py            # (make bench) default teacher and student, CPU

All in one process, on the same fixed batches of the default benchmark. "rtd_lab" is the real
thing: the method's LightningModule under a Lightning Trainer configured as ``conf/trainer`` does
(gradient clipping 1.0, logging every 25 steps, no validation, no checkpoints). "hand-written" is
a plain PyTorch loop doing the same math on the same batches: student and teacher forward, the
same ``LogitKD`` (shift + ``kd_loss``), backward, clipping, AdamW, the warm-up + cosine schedule. Each timing is a whole
``--steps``-step run (Trainer start-up included), repeated ``--reps`` times with the contenders' order
reversed every other repetition; medians over repetitions are reported. Within a run, the steps
after the first 20 (start-up and first-step costs excluded) give the median step and the
10th-percentile step (``steady``). The process's allocator is set as ``python -m rtd_lab``
sets it (``--allocator retain``: ``rtd_lab.utils.retain_freed_memory``), for every contender alike;
``--allocator default`` measures glibc's default instead.
"boundaries learned online": RTD with ``data.boundaries=learned_online`` — the boundary classifier
(``segment:``, trained here if not cached) run on the teacher's states of every batch, as the RTD
paper trains (its +60 % overhead includes it), teacher online.
"Cached" contenders read the teacher's outputs from the offline cache (``task=cache``, built here
if missing, with the default settings: top-16 logits in float16, ``tail=bucket``) on the same
batches. Peak memory of training, per contender: in a fresh process each (``--memory-steps`` steps),
the peak resident set above what the set-up left (Linux: the peak is reset before training); also the
benchmark process's own peak after all runs, and on a GPU ``torch.cuda.max_memory_allocated`` per
contender. Writes ``benchmarks/results/step_time.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from torch.utils.data import DataLoader

from rtd_lab.data.datamodule import ReasoningDataModule
from rtd_lab.data.training_set import build_splits
from rtd_lab.models.provision import prepare_student, prepare_teacher
from rtd_lab.optim import warmup_cosine
from rtd_lab.tasks.segment import boundary_classifier as classifier_of_config
from rtd_lab.tasks.settings import build_context, student_settings, teacher_settings
from rtd_lab.teacher_cache import CacheSpec, TeacherCacheSettings, prepare_teacher_cache, teacher_identity
from rtd_lab.utils import retain_freed_memory

ROOT = Path(__file__).resolve().parents[1]


def build(experiment: str, cache_dir: str):
    with initialize_config_dir(config_dir=str(ROOT / "rtd_lab" / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"+experiment={experiment}", "curriculum=none", "logger=csv"])
    with open_dict(cfg):
        cfg.paths.cache_dir, cfg.paths.output_dir = cache_dir, str(ROOT / "benchmarks" / "results" / "_run")
    data = instantiate(cfg.data)
    ctx = build_context(cfg)
    teacher, tokenizer, info = prepare_teacher(teacher_settings(cfg.teacher), ctx, data.benchmark)
    L.seed_everything(0)
    student = prepare_student(student_settings(cfg.student), ctx, tokenizer, teacher, 0)
    dm = ReasoningDataModule.from_settings(data, build_splits(data, tokenizer), tokenizer.pad_token_id)
    method = OmegaConf.to_container(cfg.method, resolve=True)
    module = instantiate(
        method,
        student=student,
        teacher=teacher,
        evaluator=None,
        optimizer=instantiate(cfg.optim.optimizer),
        scheduler=instantiate(cfg.optim.scheduler),
    )
    module.teacher_info = info
    return cfg, dm, module


def build_cache(cfg, dm, module):
    """The offline teacher cache of the training split (built here if missing)."""
    settings = TeacherCacheSettings(**OmegaConf.to_container(cfg.teacher_cache, resolve=True))
    spec = CacheSpec(top_k=settings.top_k, layer=module.teacher.layer, dtype=settings.dtype, **module.cache_request())
    cache = prepare_teacher_cache(
        settings,
        module.teacher,
        dm.encoded["train"],
        spec,
        teacher_identity(module.teacher_info, module.teacher.model),
        Path(cfg.paths.cache_dir),
        batch_size=cfg.data.eval_batch_size,
        pad_id=dm.pad_id,
        force_build=True,
    )
    return cache


def boundary_classifier(cfg, dm, module):
    """The boundary classifier of ``segment:`` for this teacher (as ``data.boundaries=learned_online``)."""
    clf, _ = classifier_of_config(cfg, build_context(cfg), dm.encoded, dm.pad_id, module.teacher)
    return clf


def fixed_batches(dm, steps: int) -> list[dict]:
    """``steps`` training batches, epoch after epoch (the default transfer set is 8 batches long)."""
    batches: list[dict] = []
    while len(batches) < steps:
        batches += itertools.islice(iter(dm.train_dataloader()), steps - len(batches))
    return batches


WARM = 20  # steady state: steps after the first WARM (start-up, allocator, first-step costs excluded)


class StepClock(L.Callback):
    def __init__(self, stamps: list[float]):
        self.stamps = stamps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.stamps.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.stamps.append(time.perf_counter())


def steady(stamps: list[float], quantile: float = 0.5) -> float:
    """A quantile of the seconds of one step, over the steps after the first WARM.

    The median, and the 10th percentile: on a shared machine steps come in two speeds, undisturbed
    and slowed by load from elsewhere (measured here: ~39 vs ~50 ms), and how many steps of a run
    fall in the slow mode is luck. As with ``timeit``'s minimum, a low quantile reads the code's
    undisturbed cost (the batches, hence step sizes, are the same for every contender).
    """
    durations = sorted(b - a for a, b in itertools.pairwise(stamps[WARM:]))
    return durations[round(quantile * (len(durations) - 1))]


def lightning_run(module, batches, steps: int, stamps: list[float] | None = None) -> float:
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
        callbacks=[StepClock(stamps if stamps is not None else [])],
    )
    module = copy.deepcopy(module)  # a fresh student each run (the hand-written loop's copy is untimed too)
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    return time.perf_counter() - start


def hand_run(module, batches, steps: int, cfg, stamps: list[float] | None = None) -> float:
    stamps = stamps if stamps is not None else []
    student, teacher = copy.deepcopy(module.student), module.teacher.model
    kd = module.kd  # LogitKD: the method's settings and the causal shift around losses.kd_loss
    start = time.perf_counter()
    opt = torch.optim.AdamW(
        student.parameters(), lr=cfg.optim.optimizer.lr, weight_decay=cfg.optim.optimizer.weight_decay
    )
    sched = warmup_cosine(opt, steps, cfg.optim.scheduler.warmup_ratio, cfg.optim.scheduler.min_lr_ratio)
    student.train()
    for batch in batches[:steps]:
        stamps.append(time.perf_counter())
        logits = student(input_ids=batch["input_ids"], use_cache=False).logits
        with torch.no_grad():
            t_logits = teacher(input_ids=batch["input_ids"], use_cache=False).logits
        loss = kd(logits, t_logits, batch["labels"]).loss  # the shift + kd_loss, a pure function
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        sched.step()
    stamps.append(time.perf_counter())
    return time.perf_counter() - start


def setup(args) -> tuple:
    """The models, the fixed batches (teacher online and cached) and the contenders, timed or measured."""
    cache = os.environ.get("RTD_LAB_CACHE", str(ROOT / ".cache" / "rtd_lab"))
    cfg, dm, kd_module = build("standard_kd", cache)
    _, _, rtd_module = build("rtd", cache)
    batches = fixed_batches(dm, args.steps)  # the same batches for every contender
    cache = build_cache(cfg, dm, rtd_module)  # KD and RTD share one cache
    cache_stats = cache.manifest["stats"]
    for b in batches:
        b.pop("examples", None)  # python objects: not part of the math

    classifier = boundary_classifier(cfg, dm, rtd_module)

    def with_online_boundaries(st):  # RTD on the same batches, their boundaries found by the classifier
        rtd_module.use_boundary_classifier(classifier)
        try:
            return lightning_run(rtd_module, batches, args.steps, st)
        finally:
            rtd_module.__dict__.pop("boundary_classifier", None)

    def with_cache(module, st):  # the same module and batches, the teacher read from the cache
        module.teacher_cache = cache
        try:
            return lightning_run(module, batches, args.steps, st)
        finally:
            module.teacher_cache = None

    contenders = {
        "rtd_lab standard_kd": lambda st: lightning_run(kd_module, batches, args.steps, st),
        "hand-written standard_kd": lambda st: hand_run(kd_module, batches, args.steps, cfg, st),
        "rtd_lab rtd": lambda st: lightning_run(rtd_module, batches, args.steps, st),
        "rtd_lab rtd, boundaries learned online": with_online_boundaries,
        "rtd_lab standard_kd, cached teacher": lambda st: with_cache(kd_module, st),
        "rtd_lab rtd, cached teacher": lambda st: with_cache(rtd_module, st),
    }
    return cfg, kd_module, batches, cache_stats, contenders


def proc_status_kb(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def peak_of(args) -> None:
    """The child process of measure_memory: one contender's peak resident memory above what setup left.

    Linux only: the peak (VmHWM) is reset to the current resident set just before training
    (``/proc/self/clear_refs``), so the set-up's own peak (building, cache verification) is not counted.
    """
    *_, contenders = setup(args)
    Path("/proc/self/clear_refs").write_text("5")
    before = proc_status_kb("VmRSS")
    contenders[args.peak_of](None)
    print(json.dumps({"before_mb": before / 1024, "peak_mb": proc_status_kb("VmHWM") / 1024}))


def measure_memory(args, names: list[str]) -> dict[str, float] | None:
    """Per contender, in a fresh process each: MB resident at the peak of training, above the set-up."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    out = {}
    for name in names:
        cmd = [sys.executable, __file__, "--peak-of", name, "--steps", str(args.memory_steps)]
        child = subprocess.run([*cmd, "--allocator", args.allocator], capture_output=True, text=True, check=True)
        m = json.loads(child.stdout.strip().splitlines()[-1])
        out[name] = m["peak_mb"] - m["before_mb"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--allocator", choices=["retain", "default"], default="retain")
    p.add_argument("--memory-steps", type=int, default=30, help="training steps of each --memory child")
    p.add_argument("--peak-of", help=argparse.SUPPRESS)  # internal: the --memory child for one contender
    args = p.parse_args()
    allocator = args.allocator == "retain" and retain_freed_memory()
    if args.peak_of:
        return peak_of(args)
    cfg, kd_module, batches, cache_stats, contenders = setup(args)
    runs: dict[str, list[float]] = {k: [] for k in contenders}
    steady_runs: dict[str, list[float]] = {k: [] for k in contenders}
    fast_runs: dict[str, list[float]] = {k: [] for k in contenders}
    gpu_peak: dict[str, int] = {}
    lightning_run(kd_module, batches, 5)  # warm-up: allocator, kernels, Lightning imports
    for rep in range(args.reps):  # interleaved, so drift in machine load hits all contenders alike
        for name in list(contenders)[:: 1 if rep % 2 == 0 else -1]:
            run = contenders[name]
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            stamps: list[float] = []
            runs[name].append(run(stamps))
            steady_runs[name].append(steady(stamps))
            fast_runs[name].append(steady(stamps, 0.1))
            if torch.cuda.is_available():
                gpu_peak[name] = torch.cuda.max_memory_allocated()
    med = {k: statistics.median(v) for k, v in runs.items()}
    st = {k: statistics.median(v) for k, v in steady_runs.items()}
    fast = {k: statistics.median(v) for k, v in fast_runs.items()}
    memory = measure_memory(args, list(contenders))
    result = {
        "seconds_per_step": {k: v / args.steps for k, v in med.items()},
        "steady_seconds_per_step": st,
        "p10_seconds_per_step": fast,
        "framework_over_hand_written_steady": st["rtd_lab standard_kd"] / st["hand-written standard_kd"],
        "framework_over_hand_written_p10": fast["rtd_lab standard_kd"] / fast["hand-written standard_kd"],
        "rtd_over_kd_cached_steady": st["rtd_lab rtd, cached teacher"] / st["rtd_lab standard_kd, cached teacher"],
        "rtd_over_kd_cached_p10": fast["rtd_lab rtd, cached teacher"] / fast["rtd_lab standard_kd, cached teacher"],
        "rtd_over_kd_online": med["rtd_lab rtd"] / med["rtd_lab standard_kd"],
        "rtd_learned_online_over_kd_online": med["rtd_lab rtd, boundaries learned online"] / med["rtd_lab standard_kd"],
        "rtd_over_kd_cached": med["rtd_lab rtd, cached teacher"] / med["rtd_lab standard_kd, cached teacher"],
        "rtd_cached_over_kd_online": med["rtd_lab rtd, cached teacher"] / med["rtd_lab standard_kd"],
        "framework_over_hand_written": med["rtd_lab standard_kd"] / med["hand-written standard_kd"],
        "cache": cache_stats,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "training_peak_mb_above_setup": memory,
        "gpu_peak_bytes": gpu_peak or None,
        "runs_seconds": runs,
        "steady_runs_seconds": steady_runs,
        "p10_runs_seconds": fast_runs,
        "settings": vars(args)
        | {"batch_size": cfg.data.batch_size, "threads": torch.get_num_threads(), "freed_memory_retained": allocator},
    }
    lines = [
        f"Training-step time, default models, batch {cfg.data.batch_size}, CPU ({os.cpu_count()} cores), "
        f"{args.steps}-step runs incl. start-up, median of {args.reps}, allocator: "
        + ("freed memory retained (rtd_lab's default)" if allocator else "glibc default"),
        "",
        "| contender | ms / step, whole run | ms / step after step 20: median | 10th percentile |",
        "|---|---|---|---|",
        *[
            f"| {k} | {1000 * v:.1f} | {1000 * st[k]:.1f} | {1000 * fast[k]:.1f} |"
            for k, v in result["seconds_per_step"].items()
        ],
        "",
        "| measure | value | goal |",
        "|---|---|---|",
        f"| RTD / standard KD, teacher online | {result['rtd_over_kd_online']:.2f} | |",
        f"| RTD with boundaries learned online / standard KD, teacher online | "
        f"{result['rtd_learned_online_over_kd_online']:.2f} | |",
        f"| RTD / standard KD, teacher cached | {result['rtd_over_kd_cached']:.2f} | <= 1.15 |",
        f"| RTD cached / standard KD online | {result['rtd_cached_over_kd_online']:.2f} | |",
        f"| RTD / standard KD, teacher cached, median step | {result['rtd_over_kd_cached_steady']:.2f} | <= 1.15 |",
        f"| RTD / standard KD, teacher cached, 10th-percentile step | {result['rtd_over_kd_cached_p10']:.2f} "
        "| <= 1.15 |",
        f"| rtd_lab standard KD / hand-written loop, whole run | {result['framework_over_hand_written']:.2f} | |",
        f"| rtd_lab standard KD / hand-written loop, median step | {result['framework_over_hand_written_steady']:.2f} "
        "| <= 1.05 |",
        f"| rtd_lab standard KD / hand-written loop, 10th-percentile step | "
        f"{result['framework_over_hand_written_p10']:.2f} | <= 1.05 |",
        f"| cache size, bytes per supervised token | {cache_stats['bytes_per_token']:.1f} | |",
        f"| cache size, total | {cache_stats['bytes'] / 1e6:.1f} MB | |",
        *[
            f"| peak memory of training ({args.memory_steps} steps, own process) above set-up, {k} | {v:.0f} MB | |"
            for k, v in (memory or {}).items()
        ],
        f"| peak resident memory of the process (all runs) | {result['peak_rss_mb']:.0f} MB | |",
        *[f"| GPU peak, {k} | {v / 2**20:.0f} MiB | |" for k, v in gpu_peak.items()],
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step_time.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "step_time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
