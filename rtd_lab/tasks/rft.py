"""The RFT paper's whole pipeline inside a training run: ``data.trace_source=rft``.

    python -m rtd_lab +experiment=cot_ft data.trace_source=rft sample.temperatures=[1.0]

SAMPLE (``sample:``) → FILTER (``filter:``) → the student trains on the kept traces. Both stages
write under ``<paths.cache_dir>/samples/<hash>``, the hash of everything that decides the samples
(the sample settings, the teacher config, the benchmark), so a sweep samples once per arm and every
later run (another seed, another method) reads the same traces. SAMPLE resumes its finished chunks;
FILTER's dataset is written atomically, so "it exists" means "it is complete".
``sample.out_dir`` and ``filter.*`` are set here; the stand-alone stages (``task=sample``,
``task=filter``) keep theirs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, open_dict

from rtd_lab.tasks.filter import run_filter
from rtd_lab.tasks.sample import run_sample, sample_settings
from rtd_lab.tasks.settings import cache_dir
from rtd_lab.utils import artifact_key, build_lock

log = logging.getLogger(__name__)
RFT_CACHE_VERSION = 1  # bump when SAMPLE's or FILTER's output for the same config changes


def rft_key(cfg: DictConfig) -> str:
    return artifact_key(RFT_CACHE_VERSION, sample_settings(cfg))


def rft_dataset(cfg: DictConfig) -> Path:
    """The FILTER output for ``cfg``'s SAMPLE settings, made (or finished) if need be."""
    root = cache_dir(cfg) / "samples" / rft_key(cfg)
    # One set of samples, filtered by answer or not (the unfiltered arm reads the same samples).
    name = "filtered" if cfg.filter.get("by_answer", True) else "unfiltered"
    filtered = root / name / "dataset"
    with build_lock(root):  # the seeds of a parallel sweep share one set of samples: one job draws it
        if filtered.exists():
            log.info("RFT traces from the cache: %s", filtered)
            return filtered
        stage_cfg = cfg.copy()
        with open_dict(stage_cfg):
            stage_cfg.sample.out_dir = str(root)
            stage_cfg.filter.input = str(root / "dataset")
            stage_cfg.filter.out_dir = str(root / name)
        run_sample(stage_cfg)
        return run_filter(stage_cfg)
