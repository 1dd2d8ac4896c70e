"""``task=segment``: the rule-based and the learned step segmenters scored against gold boundaries."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from rtd_lab.data.segmenters import RULES
from rtd_lab.data.training_set import Splits, encode_splits
from rtd_lab.models.provision import BuildContext, prepare_teacher
from rtd_lab.tasks.settings import build_context, container, teacher_settings
from rtd_lab.traces.segment import SegmenterSettings, apply_learned_boundaries, segmenter_for, set_prf
from rtd_lab.utils import atomic_write_json, atomic_write_text


def learned_boundaries(cfg: DictConfig, ctx: BuildContext, splits: Splits, pad_id: int, teacher) -> tuple[Splits, dict]:
    """The boundary classifier of ``segment:`` (trained or loaded) gives the train and val splits its
    boundaries; returns the new splits and its info."""
    clf, info = boundary_classifier(cfg, ctx, splits, pad_id, teacher)
    return apply_learned_boundaries(splits, pad_id, teacher.model, clf), info


def boundary_classifier(cfg: DictConfig, ctx: BuildContext, splits: Splits, pad_id: int, teacher):
    """The boundary classifier of ``segment:`` (trained on the splits' gold boundaries, or loaded from
    its cache) and its info (cache path, held-out report); ``data.boundaries=learned_online`` runs it
    per batch."""
    key_parts = {"teacher": str(teacher.model.name_or_path), "benchmark": ctx.benchmark}
    settings = SegmenterSettings(**container(cfg.segment))
    return segmenter_for(splits, pad_id, teacher.model, ctx.cache_dir, key_parts, settings)


def run_segment(cfg: DictConfig) -> dict:
    """``task=segment``: every segmenter against the gold boundaries of the validation split.

    Rule-based segmenters are scored as they are; the learned classifier is trained on training
    traces first (or loaded from its cache). Token-level precision / recall / F1, written to
    ``<run dir>/segment_report.json`` and ``.md`` and printed.
    """
    benchmark = hydra.utils.instantiate(cfg.data.benchmark)
    ctx = build_context(cfg)
    teacher, tokenizer, _ = prepare_teacher(teacher_settings(cfg.teacher), ctx, benchmark)
    splits = encode_splits(benchmark.splits(), tokenizer, benchmark.format, answer_only=False, boundaries="gold")
    val = splits["val"]
    gold = [set(x.boundary_pos) for x in val]
    report: dict[str, dict] = {}
    examples = {"val": [x.example for x in val]}
    for rule in RULES:  # the validation split as a run with data.boundaries=<rule> encodes it
        ruled = encode_splits(examples, tokenizer, benchmark.format, answer_only=False, boundaries=rule)
        report[rule] = set_prf([set(x.boundary_pos) for x in ruled["val"]], gold)
    splits, info = learned_boundaries(cfg, ctx, splits, tokenizer.pad_token_id, teacher)
    report["learned"] = set_prf([set(x.boundary_pos) for x in splits["val"]], gold)
    out = Path(cfg.paths.output_dir)
    lines = ["| segmenter | precision | recall | F1 |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} |" for k, v in report.items()]
    text = f"Step boundaries on the validation split ({len(val)} traces), token level:\n\n" + "\n".join(lines) + "\n"
    atomic_write_json(out / "segment_report.json", {"segmenters": report, "classifier": info})

    atomic_write_text(out / "segment_report.md", text)
    print(text)
    return report
