"""Does the boundary classifier find the student's own steps? (On-policy RTD aligns at them.)

The classifier is trained on gold traces. On-policy RTD runs it on the teacher's states of the
student's samples, which no gold boundary exists for; but a sample writes its steps in the
benchmark's format, so the number of steps it writes (the separator rule) is a check of the number
the classifier finds, and the two should agree on well-formed samples.

    RTD_LAB_CACHE=<the sweep's cache> python experiments/on_policy/boundaries_on_samples.py <run dir> [overrides]

<run dir>: an rtd_on_policy run of the paper table's format (overrides: anything else its command set).

Samples one completion per training question (T = 1, as on-policy RTD's sampled steps) from the run's
exported student and prints, over samples: the share whose found-boundary count equals the steps
written, the mean of each, and the distribution of (found − written).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from transformers import AutoModelForCausalLM

from rtd_lab.data.batch import move_batch
from rtd_lab.data.segmenters import segment_separators
from rtd_lab.tasks.train import prepare
from rtd_lab.traces.segment import online_boundaries

CONF = Path(__file__).resolve().parents[2] / "rtd_lab" / "conf"
DEFAULT = ["+experiment=paper_table", "+experiment@_global_=rtd_on_policy", "hydra.mode=RUN"]


def main(run_dir: Path, overrides: list[str]) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=DEFAULT + overrides, return_hydra_config=False)
    p = prepare(cfg)
    module, fmt = p.module, p.data.benchmark.format
    module.student = AutoModelForCausalLM.from_pretrained(run_dir / "student").eval()
    torch.manual_seed(0)
    diffs, found_all, written_all = Counter(), [], []
    for batch in p.datamodule.train_dataloader():
        batch = move_batch(batch, module.device)
        sampled = module.student_samples(batch)
        _, mask = online_boundaries(module.boundary_classifier, module.teacher.model, sampled)
        for b in range(mask.size(0)):
            ids = sampled["input_ids"][b][sampled["labels"][b] != -100].tolist()
            text = p.tokenizer.decode(ids, skip_special_tokens=True)
            written = len(segment_separators(text, fmt))
            found = int(mask[b].sum())
            diffs[found - written] += 1
            found_all.append(found)
            written_all.append(written)
    n = len(found_all)
    print(f"{n} samples of {run_dir}")
    print(f"found == written: {diffs[0] / n:.3f}")
    print(f"mean found {sum(found_all) / n:.2f}, mean written {sum(written_all) / n:.2f}")
    print("found - written:", dict(sorted(diffs.items())))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
