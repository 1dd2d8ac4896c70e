"""``task=sample``: the RFT paper's SAMPLE stage (``rtd_lab.traces.sample``) as its config asks."""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
import hydra
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from rtd_lab.models.provision import prepare_teacher
from rtd_lab.tasks.settings import build_context, container, teacher_settings
from rtd_lab.traces import sample as sampling
from rtd_lab.traces.sample import COLUMNS, SampleSettings, TeacherSpec, chunk_seed, claim_out_dir
from rtd_lab.utils import atomic_write_json, save_dataset_atomically

log = logging.getLogger(__name__)


def load_teacher(cfg: DictConfig, spec: TeacherSpec, benchmark):
    """The teacher a spec names: ``teacher:`` with the spec's pretrained model or overrides, through the
    same cache as training."""
    teacher = OmegaConf.to_container(cfg.teacher, resolve=True)
    if spec.pretrained:
        teacher["pretrained"] = spec.pretrained
    for key, value in (spec.overrides or {}).items():
        base = OmegaConf.create(teacher.get(key) or {})
        teacher[key] = OmegaConf.to_container(OmegaConf.merge(base, value)) if isinstance(value, dict) else value
    model, tokenizer, info = prepare_teacher(teacher_settings(teacher), build_context(cfg), benchmark)
    return model.model, tokenizer, info


def sample_settings(cfg: DictConfig) -> dict:
    """Everything that decides the sampled rows: ``sample.*`` but where they go, the benchmark, the teacher."""
    sample = container(cfg.sample)
    sample.pop("out_dir", None)
    return {"sample": sample, "teacher": container(cfg.teacher), "benchmark": container(cfg.data.benchmark)}


def run_sample(cfg: DictConfig) -> Path:
    """The SAMPLE stage: returns the dataset folder."""
    s = SampleSettings(**container(cfg.sample))
    teachers = s.specs()
    temperatures = [float(t) for t in s.temperatures]
    out = Path(hydra.utils.to_absolute_path(s.out_dir))
    out.mkdir(parents=True, exist_ok=True)
    settings = sample_settings(cfg)
    key = claim_out_dir(out, settings)
    (out / "chunks").mkdir(exist_ok=True)
    benchmark = hydra.utils.instantiate(cfg.data.benchmark)
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
        model = tokenizer = engine = None
        for temperature in temperatures:
            for k in range(n_chunks):
                name = f"{spec.name}__t{temperature:g}__{k:05d}"
                names.append(name)
                final = out / "chunks" / name
                if final.exists():  # written by an earlier, interrupted run: keep it
                    progress.update()
                    continue
                if model is None:
                    model, tokenizer, info = load_teacher(cfg, spec, benchmark)
                    if s.backend == "vllm":  # the teacher's folder (cached or pretrained), served by vLLM
                        engine = sampling.vllm_engine(info["source"], s.seed)
                seed = chunk_seed(s.seed, spec.name, temperature, k)
                part = examples[k * s.chunk_questions : (k + 1) * s.chunk_questions]
                if engine is not None:
                    rows = sampling.sample_chunk_vllm(engine, benchmark, part, temperature, s.n_samples, seed)
                else:
                    rows = sampling.sample_chunk(
                        model, tokenizer, benchmark, part, temperature, s.n_samples, s.batch_size, seed
                    )
                for r in rows:
                    r["teacher"] = spec.name
                save_dataset_atomically(datasets.Dataset.from_list([{c: r[c] for c in COLUMNS} for r in rows]), final)
                progress.update()
    progress.close()
    chunks = [datasets.load_from_disk(str(out / "chunks" / n)) for n in names]
    save_dataset_atomically(datasets.concatenate_datasets(chunks), out / "dataset")
    log.info("sampled %d traces into %s", sum(len(c) for c in chunks), out / "dataset")
    return out / "dataset"
