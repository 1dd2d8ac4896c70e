"""SAMPLE (the RFT paper): N traces per question from one or more teachers at one or more temperatures.

    python -m rtd_lab task=sample sample.temperatures=[0.7,1.0] sample.n_samples=4

Generation is batched (``sample.batch_size`` prompts at once, left-padded, with the KV cache),
with a progress bar. The output is a Hugging Face ``datasets`` dataset on disk,
``<sample.out_dir>/dataset``, one row per trace, with its provenance:

    uid, question, depth, gold_answer, teacher, temperature, sample_index, seed, completion

Writing is chunked and resumable. Questions are cut into chunks of ``sample.chunk_questions``; each
(teacher, temperature, chunk) is generated with its own seed (a hash of the run's seed and those
three), written to a temporary folder and renamed into ``chunks/`` only when complete. A rerun
skips the chunks that exist, so an interrupted run continues where it stopped and produces exactly
the dataset an uninterrupted one would; ``dataset/`` is assembled (atomically, too) only once
every chunk is there, so a later stage never reads a partial result.

Chunks are only ever reused by the settings that made them: ``sample.json`` holds the key of every
setting that decides the rows (``sample.*`` but ``out_dir``, the benchmark, the teacher), written
before the first chunk; a run with another key in the same ``out_dir`` is refused, naming the
settings that differ, before anything is generated.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm.auto import tqdm
from transformers import GenerationConfig

from rtd_lab.data.datamodule import Collator, encode_example, move_batch
from rtd_lab.utils import atomic_write_json, config_hash, differing_fields

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a teacher's name becomes a folder name: no "/" or ".."
COLUMNS = ("uid", "question", "depth", "gold_answer", "teacher", "temperature", "sample_index", "seed", "completion")


@dataclass
class TeacherSpec:
    """One teacher of the list: a name, and either a pretrained model or overrides of ``teacher``."""

    name: str
    pretrained: str | None = None
    overrides: dict = field(default_factory=dict)  # e.g. {"train": {"max_steps": 300}}: a weaker checkpoint


def chunk_seed(seed: int, teacher: str, temperature: float, chunk: int) -> int:
    return int(config_hash({"seed": seed, "teacher": teacher, "t": temperature, "chunk": chunk}, 8), 16)


@torch.no_grad()
def sample_chunk(model, tokenizer, benchmark, examples, temperature: float, n_samples: int, batch_size: int, seed: int):
    """Rows for ``n_samples`` traces of every example, generated ``batch_size`` prompts at a time."""
    collate = Collator(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    greedy = temperature == 0
    gen = GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else temperature,
        top_k=None if greedy else 0,
        max_new_tokens=benchmark.max_completion_tokens(),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model.eval()
    torch.manual_seed(seed)
    rows = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = move_batch(collate([encode_example(ex, tokenizer, benchmark.format) for ex in chunk]), device)
        prompts = batch["prompt_ids"].repeat_interleave(n_samples, dim=0)  # (B * N, P)
        masks = batch["prompt_mask"].repeat_interleave(n_samples, dim=0)
        out = model.generate(input_ids=prompts, attention_mask=masks, generation_config=gen)
        texts = tokenizer.batch_decode(out[:, prompts.size(1) :], skip_special_tokens=True)
        for i, text in enumerate(texts):
            rows.append(trace_row(chunk[i // n_samples], temperature, i % n_samples, seed, text.strip()))
    return rows


def trace_row(ex, temperature: float, sample_index: int, seed: int, completion: str) -> dict:
    """One sampled trace with its provenance (the teacher's name is added per chunk)."""
    return {
        "uid": ex.uid,
        "question": ex.question,
        "depth": ex.depth,
        "gold_answer": str(ex.answer),
        "temperature": float(temperature),
        "sample_index": sample_index,
        "seed": seed,
        "completion": completion,
    }


def _save_atomically(ds, path: Path) -> None:
    tmp = path.parent / f".{path.name}.tmp-{time.time_ns()}"
    ds.save_to_disk(str(tmp))
    if path.exists():  # an older assembly of the same chunks: replace it
        shutil.rmtree(path)
    tmp.rename(path)


def load_teacher(cfg: DictConfig, spec: TeacherSpec, benchmark):
    """The teacher a spec names, through the same cache as training (``prepare_teacher``)."""
    from rtd_lab.train import prepare_teacher

    tcfg = cfg.copy()
    with open_dict(tcfg):
        if spec.pretrained:
            tcfg.teacher.pretrained = spec.pretrained
        for key, value in OmegaConf.to_container(OmegaConf.create(spec.overrides or {})).items():
            tcfg.teacher[key] = OmegaConf.merge(tcfg.teacher.get(key, {}), value) if isinstance(value, dict) else value
    teacher, tokenizer, info = prepare_teacher(tcfg, benchmark)
    return teacher.model, tokenizer, info


def sample_settings(cfg: DictConfig) -> dict:
    """Everything that decides the sampled rows: ``sample.*`` but where they go, the benchmark, the teacher."""
    sample = OmegaConf.to_container(cfg.sample, resolve=True)
    sample.pop("out_dir", None)
    return {
        "sample": sample,
        "teacher": OmegaConf.to_container(cfg.teacher, resolve=True),
        "benchmark": OmegaConf.to_container(cfg.data.benchmark, resolve=True),
    }


def claim_out_dir(out: Path, settings: dict) -> str:
    """Write (or check) ``sample.json``'s key: an ``out_dir`` resumes only the settings that made it."""
    key = config_hash(settings)
    manifest = out / "sample.json"
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if old.get("key") != key:
            what = differing_fields(old.get("settings") or {}, settings) or "a sample.json without a settings key"
            raise ValueError(
                f"sample.out_dir={out} holds samples made with other settings ({what}); their chunks would be "
                "returned as if made with these. Pass another sample.out_dir (or delete that folder)."
            )
        return key
    if (out / "chunks").exists() and any((out / "chunks").iterdir()):
        raise ValueError(f"sample.out_dir={out} holds chunks but no sample.json: settings unknown; use another folder")
    atomic_write_json(manifest, {"key": key, "settings": settings})
    return key


def check_sample_settings(s) -> None:
    """The ``sample.*`` settings that would otherwise fail late (KeyError, ZeroDivisionError)."""
    if s.split not in SPLITS:
        raise ValueError(f"sample.split must be one of {list(SPLITS)}, got {s.split!r}")
    for name in ("chunk_questions", "n_samples", "batch_size"):
        value = s.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"sample.{name} must be an integer >= 1, got {value!r}")
    if s.max_questions is not None and (not isinstance(s.max_questions, int) or s.max_questions < 1):
        raise ValueError(f"sample.max_questions must be an integer >= 1 or null, got {s.max_questions!r}")
    for t in s.teachers:
        if not isinstance(t.get("name"), str) or not _NAME.fullmatch(t.get("name")):
            raise ValueError(f"sample.teachers: name {t.get('name')!r} must be letters, digits, _ . - (a folder name)")


def run_sample(cfg: DictConfig) -> Path:
    """The SAMPLE stage: returns the dataset folder."""
    import datasets
    import hydra

    s = cfg.sample
    check_sample_settings(s)
    teachers = [TeacherSpec(**OmegaConf.to_container(t, resolve=True)) for t in s.teachers]
    temperatures = [float(t) for t in s.temperatures]
    if not teachers or not temperatures or s.n_samples < 1:
        raise ValueError("sample.teachers and sample.temperatures must be non-empty and sample.n_samples >= 1")
    if len({t.name for t in teachers}) != len(teachers):
        raise ValueError(f"sample.teachers: names must be unique, got {[t.name for t in teachers]}")
    out = Path(hydra.utils.to_absolute_path(s.out_dir))
    out.mkdir(parents=True, exist_ok=True)
    settings = sample_settings(cfg)
    key = claim_out_dir(out, settings)
    (out / "chunks").mkdir(exist_ok=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    benchmark = datamodule.benchmark
    examples = benchmark.splits()[s.split]
    if s.max_questions is not None:
        examples = examples[:: max(1, len(examples) // s.max_questions)][: s.max_questions]
    n_chunks = -(-len(examples) // s.chunk_questions)
    atomic_write_json(
        out / "sample.json",
        {"key": key, "settings": settings, "n_questions": len(examples), "n_chunks": n_chunks},
    )
    names = []
    progress = tqdm(total=len(teachers) * len(temperatures) * n_chunks, desc="sample (chunks)")
    for spec in teachers:
        model = tokenizer = None
        for temperature in temperatures:
            for k in range(n_chunks):
                name = f"{spec.name}__t{temperature:g}__{k:05d}"
                names.append(name)
                final = out / "chunks" / name
                if final.exists():  # written by an earlier, interrupted run: keep it
                    progress.update()
                    continue
                if model is None:
                    model, tokenizer, _ = load_teacher(cfg, spec, benchmark)
                seed = chunk_seed(s.get("seed", cfg.seed), spec.name, temperature, k)
                part = examples[k * s.chunk_questions : (k + 1) * s.chunk_questions]
                rows = sample_chunk(model, tokenizer, benchmark, part, temperature, s.n_samples, s.batch_size, seed)
                for r in rows:
                    r["teacher"] = spec.name
                _save_atomically(datasets.Dataset.from_list([{c: r[c] for c in COLUMNS} for r in rows]), final)
                progress.update()
    progress.close()
    chunks = [datasets.load_from_disk(str(out / "chunks" / n)) for n in names]
    _save_atomically(datasets.concatenate_datasets(chunks), out / "dataset")
    log.info("sampled %d traces into %s", sum(len(c) for c in chunks), out / "dataset")
    return out / "dataset"
