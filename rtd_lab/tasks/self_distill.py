"""``task=self_distill``: the RFT paper's "collapse under self-distillation loops", as a loop of runs.

    python -m rtd_lab +experiment=self_distill                  # 4 rounds on data=synthetic_dag

Round 1 is an RFT run (``data.trace_source=rft``): the run's teacher samples, FILTER keeps the
traces with the gold answer, the student fine-tunes on them. In round r + 1 the student of round r
is the teacher (``sample.teachers``: its exported folder) and the student that goes on training
(``student.pretrained``): the model generates its own fine-tuning data and retrains on it. Each round
is a whole training run in ``<run dir>/round_<r>`` (its results.json, predictions, exported student;
a rerun resumes: finished rounds are read back, not redone).

Per round, of the samples its teacher drew and of the student it trained:

* ``chain_acc`` (all depths and by depth): the student on the test split;
* ``valid_paths_per_question``: distinct reasoning paths with the gold answer and every step valid
  (FILTER, ``rtd_lab.traces.filter``), on a benchmark that can check steps;
* ``trace_entropy_bits``: per question, the entropy of the samples' distribution over distinct
  traces, averaged over the questions (0: every sample the same trace);
* ``distinct_traces_per_question``: distinct sampled traces, right or wrong;
* ``kept_wrong_step_share``: of the kept traces, those with the gold answer but an invalid step.

The paper's claim is that these narrow round after round: rare valid paths disappear and the model
grows more confident. Writes ``self_distill.json``, ``self_distill.md`` and ``self_distill.png``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
from omegaconf import DictConfig, OmegaConf, open_dict

from rtd_lab.tasks.rft import rft_dataset
from rtd_lab.tasks.settings import container
from rtd_lab.traces.self_distill import SelfDistillSettings, markdown, plot, sample_stats
from rtd_lab.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def round_config(cfg: DictConfig, r: int, out: Path) -> DictConfig:
    """Round ``r``'s training run: RFT from the run's teacher (r = 1) or from round r - 1's student."""
    round_cfg = cfg.copy()
    with open_dict(round_cfg):
        round_cfg.task = "train"
        round_cfg.paths.output_dir = str(out / f"round_{r}")
        round_cfg.data.trace_source = "rft"
        round_cfg.run_name = f"{cfg.run_name}_round{r}"
        if r > 1:
            previous = str(out / f"round_{r - 1}" / "student")
            round_cfg.sample.teachers = [{"name": f"student_round{r - 1}", "pretrained": previous}]
            round_cfg.student.pretrained = previous  # the same student trains on, on its own samples
    return round_cfg


def round_row(r: int, results: dict, filtered: Path) -> dict:
    root = filtered.parent.parent  # <samples>/<key>/{dataset, filtered/dataset}
    report = json.loads((filtered.parent / "report.json").read_text())
    metrics = results["student"]["metrics"]
    kept, wrong = report["kept_after_dedup"], report.get("kept_wrong_steps")
    return {
        "round": r,
        "teacher": results["config"]["sample"]["teachers"][0]["name"],
        "chain_acc": metrics["chain_acc"],
        "by_depth": {k.rsplit("_", 1)[1]: v for k, v in metrics.items() if k.startswith("chain_acc/depth_")},
        "answer_acc": metrics.get("answer_acc"),
        "accepted_rate": report["accepted"] / max(1, report["samples"]),
        "valid_paths_per_question": report.get("valid_paths_per_question"),
        "kept_wrong_step_share": None if wrong is None else wrong / max(1, kept),
        **sample_stats(datasets.load_from_disk(str(root / "dataset"))),
    }


def run_self_distill(cfg: DictConfig) -> dict:
    from rtd_lab.tasks.train import train  # the training run each round is

    s = SelfDistillSettings(**container(cfg.self_distill))
    out = Path(cfg.paths.output_dir)
    rows = []
    for r in range(1, s.rounds + 1):
        round_cfg = round_config(cfg, r, out)
        log.info("self-distillation round %d of %d: %s", r, s.rounds, round_cfg.paths.output_dir)
        results = train(round_cfg)
        rows.append(round_row(r, results, rft_dataset(round_cfg)))
        log.info("round %d: %s", r, {k: v for k, v in rows[-1].items() if k != "by_depth"})
    summary = {"seed": cfg.seed, "rounds": rows, "config": OmegaConf.to_container(cfg, resolve=True)}
    atomic_write_json(out / "self_distill.json", summary)
    atomic_write_text(out / "self_distill.md", markdown(rows))
    plot(rows, out / "self_distill.png")
    print(markdown(rows))
    return summary
