"""``task=filter``: the RFT paper's FILTER stage (``rtd_lab.traces.filter``) on a SAMPLE output, or on a
data set of finished samples (``data=gsm8k_model_solutions``)."""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
import hydra
from omegaconf import DictConfig

from rtd_lab.traces.filter import filter_rows, report_markdown, verify_steps
from rtd_lab.utils import atomic_write_json, atomic_write_text, save_dataset_atomically

log = logging.getLogger(__name__)


def run_filter(cfg: DictConfig) -> Path:
    """The FILTER stage: returns the dataset folder of the kept traces."""
    f = cfg.filter
    source = hydra.utils.instantiate(cfg.data)
    if hasattr(source, "samples"):  # a dataset of finished samples (e.g. the GSM8K model solutions)
        ds = source.samples()
        where = source.path
    else:
        where = hydra.utils.to_absolute_path(f.input)
        if not Path(where).exists():
            raise FileNotFoundError(f"filter.input: {where} does not exist (run task=sample first, or set it)")
        ds = datasets.load_from_disk(where)
    rows = ds.to_list()
    if not hasattr(source, "samples"):
        verify_steps(rows, source.benchmark)
    kept, report = filter_rows(rows, by_answer=bool(f.get("by_answer", True)))
    report["input"] = str(where)
    out = Path(hydra.utils.to_absolute_path(f.out_dir))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", report_markdown(report))
    print(report_markdown(report))
    if not kept:
        raise ValueError(
            f"FILTER kept no trace of {len(rows)} from {where}: no sampled answer matched the gold one "
            f"(see {out / 'report.md'}); sample more, at other temperatures, or from a stronger teacher"
        )
    drop = {"accepted", "kept"}
    save_dataset_atomically(
        datasets.Dataset.from_list([{k: v for k, v in r.items() if k not in drop} for r in kept]), out / "dataset"
    )
    log.info("FILTER kept %d of %d traces: %s", len(kept), len(rows), out / "dataset")
    return out / "dataset"
