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
settings that differ, before anything is generated. The stage itself is ``rtd_lab.tasks.sample``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from rtd_lab.data.batch import Collator, encode_example, move_batch
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
    for start in tqdm(range(0, len(examples), batch_size), desc=f"sample x{n_samples}", leave=False):
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


@dataclass(frozen=True)
class SampleSettings:
    """The config's ``sample:`` block; its defaults live in conf/sample/default.yaml. Checked on
    construction, so that a bad value fails before any teacher is loaded (not as a late KeyError)."""

    teachers: list  # each {name, pretrained: <hub id or path> | None, overrides: {<teacher.* keys>}}
    temperatures: list  # 0 = greedy
    n_samples: int  # traces per question, teacher and temperature
    split: str  # train | val | test
    max_questions: int | None  # None: every question of the split (else evenly spaced over it)
    chunk_questions: int  # questions per chunk: the unit of resumption
    seed: int  # each chunk's seed is a hash of it, the teacher, the temperature and the chunk
    batch_size: int  # prompts per generate() call
    out_dir: str  # rerun with the same out_dir to resume

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"sample.split must be one of {list(SPLITS)}, got {self.split!r}")
        for name in ("chunk_questions", "n_samples", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"sample.{name} must be an integer >= 1, got {value!r}")
        if self.max_questions is not None and (not isinstance(self.max_questions, int) or self.max_questions < 1):
            raise ValueError(f"sample.max_questions must be an integer >= 1 or null, got {self.max_questions!r}")
        for t in self.teachers:
            if not isinstance(t.get("name"), str) or not _NAME.fullmatch(t.get("name")):
                raise ValueError(
                    f"sample.teachers: name {t.get('name')!r} must be letters, digits, _ . - (a folder name)"
                )
        if not self.teachers or not self.temperatures:
            raise ValueError("sample.teachers and sample.temperatures must be non-empty")
        names = [t["name"] for t in self.teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"sample.teachers: names must be unique, got {names}")

    def specs(self) -> list[TeacherSpec]:
        return [TeacherSpec(**t) for t in self.teachers]
