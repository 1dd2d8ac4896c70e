"""A run directory belongs to one run: it resumes only the config that made it, and finished results
are never overwritten.

``train`` claims its directory before any work: ``run_config.json`` holds the key of the run's whole
config minus the fields that only say where or how it is displayed (``RESUME_ONLY``), written on first
use. Coming back to the directory with

- the same config and ``results.json`` present: the run is finished; its results are returned as they
  are (so a sweep relaunched into its folder completes only the jobs that are missing);
- the same config and no results: an interrupted run, resumed from its checkpoint;
- another config: refused, naming the fields that differ (a different experiment in a finished run's
  directory once loaded that run's checkpoint, trained 0 steps and overwrote its results).

Directories written before this file existed are checked against their ``results.json``'s config.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rtd_lab.utils import atomic_write_json, config_hash, differing_fields, flatten

log = logging.getLogger(__name__)
RUN_CONFIG = "run_config.json"
# Entries that place, name or display a run, or only say how to resume it: changing them between an
# interruption and the resumption is allowed.
RESUME_ONLY = {
    "ckpt_path", "retain_freed_memory", "parallel_builds", "trainer.enable_progress_bar", "teacher_cache.verify",
    "tags", "group",
}  # fmt: skip
RESUME_ONLY_PREFIX = ("paths.", "logger.", "callbacks.", "hydra.", "report.")


def run_identity(config: dict) -> dict:
    """The flat config that identifies a run (its whole config minus ``RESUME_ONLY``)."""
    return {
        k: v
        for k, v in flatten(config).items()
        if k not in RESUME_ONLY and not any(k.startswith(p) or k == p.rstrip(".") for p in RESUME_ONLY_PREFIX)
    }


def claim_run_dir(out_dir: Path, config: dict) -> dict | None:
    """Check (or record) that ``out_dir`` is this run's. Returns the finished results when this exact run
    is already done, None when it is to be trained (fresh or resumed); raises ValueError otherwise."""
    identity = run_identity(config)
    key = config_hash(identity)
    record, results = out_dir / RUN_CONFIG, out_dir / "results.json"
    previous = None
    if record.exists():
        previous = json.loads(record.read_text())["identity"]
    elif results.exists():
        try:
            previous = run_identity(json.loads(results.read_text())["config"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"{out_dir} holds a results.json that cannot be read ({type(err).__name__}); it is kept. "
                "Use another run directory (hydra.run.dir)."
            ) from err
    if previous is not None and config_hash(previous) != key:
        raise ValueError(
            f"{out_dir} belongs to another run ({differing_fields(previous, identity)}); its checkpoints and "
            "results are kept. Use another run directory (hydra.run.dir / hydra.sweep.dir)."
        )
    if results.exists():
        log.warning("%s: this run is already finished; its results.json is kept, nothing is trained", out_dir)
        return json.loads(results.read_text())
    if previous is None and (out_dir / "checkpoints").exists():
        log.warning("%s: a checkpoint with no %s (an older rtd_lab); resuming it unchecked", out_dir, RUN_CONFIG)
    if not record.exists():
        atomic_write_json(record, {"key": key, "identity": identity})
    return None


def check_checkpoint(path: Path) -> None:
    """A checkpoint to resume from must be readable: a truncated file fails here, naming itself."""
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise ValueError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {err}): truncated or corrupted. Delete it "
            "to resume from an earlier one (or start afresh), or pass ckpt_path=<another checkpoint>."
        ) from err
