"""SEGMENT (the RTD paper's teacher reasoning decomposition): where does each step of a trace conclude?

Rule-based segmenters map a completion's text to the character offsets at which steps end:

    lines        every non-empty line is a step (GSM8K's solutions)
    calculator   a step ends after each GSM8K calculator annotation's result: "<<48/2=24>>24"
    sentences    a step ends at . ! ? followed by a space or the end (decimals are not sentence ends)
    separators   the benchmark's own step separator and answer marker (" ; ", " #### ")

The learned segmenter (the RTD paper: a lightweight classifier on teacher hidden states, 94.1 % F1) is
``BoundaryClassifier``: for every completion token, the frozen teacher's hidden states at that
token (every layer, concatenated), standardised, go through a small MLP that outputs P(a step
concludes here). It is trained, with class-balanced BCE, where gold boundaries are known — the
synthetic benchmark's value tokens, GSM8K's line ends — on training-split traces, and reported with
token-level precision, recall and F1 on validation-split traces it never saw. Cached on disk by a
hash of the teacher, the benchmark and its settings.

``data.boundaries`` picks the source RTD (and every boundary-based loss) trains with: ``gold``,
``learned``, or a rule name.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rtd_lab.data.datamodule import Collator, Encoded, move_batch
from rtd_lab.prm import ProcessRewardModel, fit_scorer
from rtd_lab.utils import atomic_write_json, atomic_write_text, build_once, config_hash, verify_built

log = logging.getLogger(__name__)
SEGMENT_CACHE_VERSION = 2  # 2: decision threshold tuned for F1 on the training tokens


def segment_lines(text: str) -> list[int]:
    ends, pos = [], 0
    for line in text.split("\n"):
        stripped = line.rstrip()
        if stripped.strip():
            ends.append(pos + len(stripped) - 1)
        pos += len(line) + 1
    return ends


_CALC = re.compile(r"<<[^<>]*=[^<>]*>>\s*\$?(-?[\d.,]*\d)")


def segment_calculator(text: str) -> list[int]:
    return [m.end(1) - 1 for m in _CALC.finditer(text)]


_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def segment_sentences(text: str) -> list[int]:
    return [m.start() for m in _SENTENCE_END.finditer(text)]


def segment_separators(text: str, fmt) -> list[int]:
    """Ends of the steps as the benchmark writes them: before each separator and the answer marker."""
    body = text.split(fmt.answer_prefix.strip(), 1)[0]
    sep = fmt.step_sep.strip() or fmt.step_sep  # " ; " splits on ";", GSM8K's "\n" on itself
    ends, pos = [], 0
    for part in body.split(sep):
        if part.strip():
            ends.append(pos + len(part.rstrip()) - 1)
        pos += len(part) + len(sep)
    return ends


RULES = ("lines", "calculator", "sentences", "separators")


def rule_boundaries(rule: str, text: str, fmt) -> list[int]:
    if rule == "lines":
        return segment_lines(text)
    if rule == "calculator":
        return segment_calculator(text)
    if rule == "sentences":
        return segment_sentences(text)
    if rule == "separators":
        return segment_separators(text, fmt)
    raise ValueError(f"data.boundaries must be gold, learned or one of {list(RULES)}, got {rule!r}")


# ---- the learned segmenter ----------------------------------------------------------------------
class BoundaryClassifier(ProcessRewardModel):
    """Standardised per-token teacher features → MLP → logit of P(a step concludes at this token)."""

    threshold: float = 0.5  # P >= threshold marks a boundary (set from the trained classifier's report)


@torch.no_grad()
def token_features(teacher_model, batch: dict) -> torch.Tensor:
    """(B, T, (L + 1) * D_T): every layer's hidden state at every token."""
    out = teacher_model(input_ids=batch["input_ids"], output_hidden_states=True, use_cache=False)
    return torch.cat([h.float() for h in out.hidden_states], dim=-1)


def completion_mask_and_labels(batch: dict, encoded: list[Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) completion tokens (not prompt, padding or <eos>) and (B, T) gold boundary labels."""
    B, T = batch["input_ids"].shape
    mask = torch.zeros(B, T, dtype=torch.bool)
    labels = torch.zeros(B, T)
    for b, x in enumerate(encoded):
        mask[b, x.prompt_len : len(x.input_ids) - 1] = True
        labels[b, x.boundary_pos] = 1.0
    return mask, labels


@dataclass
class SegmenterReport:
    train_tokens: int
    heldout_tokens: int
    heldout_precision: float
    heldout_recall: float
    heldout_f1: float
    train_seconds: float
    threshold: float = 0.5  # P >= threshold is a boundary; chosen for F1 on the training tokens


def prf(pred: torch.Tensor, gold: torch.Tensor) -> tuple[float, float, float]:
    tp = float((pred & gold).sum())
    precision = tp / max(1.0, float(pred.sum()))
    recall = tp / max(1.0, float(gold.sum()))
    f1 = 2 * precision * recall / max(1e-12, precision + recall)
    return precision, recall, f1


def _collect(teacher_model, encoded: list[Encoded], pad_id: int, batch_size: int):
    collate = Collator(pad_id)
    device = next(teacher_model.parameters()).device
    xs, ys = [], []
    for start in range(0, len(encoded), batch_size):
        part = encoded[start : start + batch_size]
        batch = move_batch(collate(part), device)
        feats = token_features(teacher_model, batch).cpu()
        mask, labels = completion_mask_and_labels(batch, part)
        xs.append(feats[mask])
        ys.append(labels[mask])
    return torch.cat(xs), torch.cat(ys)


def train_segmenter(
    teacher_model,
    train: list[Encoded],
    heldout: list[Encoded],
    pad_id: int,
    hidden: int = 64,
    epochs: int = 300,
    seed: int = 0,
):
    t0 = time.time()
    x, y = _collect(teacher_model, train, pad_id, 64)
    xh, yh = _collect(teacher_model, heldout, pad_id, 64)
    if y.min() == y.max():
        raise ValueError("the gold boundaries label every completion token alike: nothing for the segmenter to learn")
    clf = fit_scorer(BoundaryClassifier(x.size(-1), hidden), x, y, epochs, lr=3e-3, seed=seed)
    with torch.no_grad():
        clf.threshold = threshold = f1_threshold(torch.sigmoid(clf(x)), y.bool())
        pred = torch.sigmoid(clf(xh)) >= threshold
    p, r, f1 = prf(pred, yh.bool())
    return clf, SegmenterReport(len(y), len(yh), p, r, f1, round(time.time() - t0, 1), threshold)


def f1_threshold(probs: torch.Tensor, gold: torch.Tensor) -> float:
    """The decision threshold with the best F1 on the training tokens. Class-balanced BCE calibrates
    P to a 50/50 prior, so P >= 0.5 over-predicts a rare class (boundaries are ~1 token in 10)."""
    candidates = [i / 20 for i in range(1, 20)]
    return max(candidates, key=lambda t: (prf(probs >= t, gold)[2], -abs(t - 0.5)))


def load_or_train_segmenter(teacher_model, train, heldout, pad_id: int, cache_dir, key_parts: dict, **kwargs):
    key = config_hash({"version": SEGMENT_CACHE_VERSION, **key_parts, **kwargs})
    root = Path(cache_dir) / "segmenters"
    path = root / key
    if not (path / "segmenter.json").exists():
        log.info("boundary classifier %s not in cache: training it (%s)", key, path)

        def build(tmp: Path) -> dict:
            clf, report = train_segmenter(teacher_model, train, heldout, pad_id, **kwargs)
            save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, str(tmp / "segmenter.safetensors"))
            hidden = kwargs.get("hidden", 64)
            return {"key": key, "n_features": clf.mean.numel(), "hidden": hidden, "report": asdict(report)}

        build_once(path, "segmenter.json", build)
    meta = verify_built(path, "segmenter.json", "cached boundary classifier")
    clf = BoundaryClassifier(meta["n_features"], meta["hidden"])
    clf.load_state_dict(load_file(str(path / "segmenter.safetensors")))
    clf.eval()
    clf.threshold = meta["report"].get("threshold", 0.5)
    r = meta["report"]
    log.info(
        "boundary classifier %s: held-out P %.3f R %.3f F1 %.3f at P >= %.2f",
        key,
        r["heldout_precision"],
        r["heldout_recall"],
        r["heldout_f1"],
        clf.threshold,
    )
    return clf, {"source": str(path), **meta}


@torch.no_grad()
def predict_boundaries(
    clf, teacher_model, encoded: list[Encoded], pad_id: int, batch_size: int = 64
) -> list[list[int]]:
    """Predicted boundary token positions of every example (P >= the classifier's threshold on
    completion tokens)."""
    collate = Collator(pad_id)
    device = next(teacher_model.parameters()).device
    clf = clf.to(device)
    out = []
    for start in range(0, len(encoded), batch_size):
        part = encoded[start : start + batch_size]
        batch = move_batch(collate(part), device)
        probs = torch.sigmoid(clf(token_features(teacher_model, batch))).cpu()
        mask, _ = completion_mask_and_labels(batch, part)
        for b in range(len(part)):
            out.append(torch.nonzero((probs[b] >= clf.threshold) & mask[b]).flatten().tolist())
    return out


def apply_learned_boundaries(datamodule, teacher_model, cache_dir, key_parts: dict, settings: dict) -> dict:
    """Train (or load) the classifier on gold boundaries, then give the train and val splits its
    predicted boundaries instead. Returns the classifier's info (cache path, held-out report)."""
    datamodule.setup()
    n = settings.get("n_train_examples", 600)
    train = datamodule.encoded["train"]
    train = train[:: max(1, len(train) // n)][:n]  # evenly over the (depth-ordered) split
    clf, info = load_or_train_segmenter(
        teacher_model,
        train,
        datamodule.encoded["val"],
        datamodule.tokenizer.pad_token_id,
        cache_dir,
        key_parts={**key_parts, "n_train_examples": n},
        hidden=settings.get("hidden", 64),
        epochs=settings.get("epochs", 300),
    )
    for split in ("train", "val"):
        predicted = predict_boundaries(clf, teacher_model, datamodule.encoded[split], datamodule.tokenizer.pad_token_id)
        datamodule.set_boundaries(split, predicted)
    return info


def run_segment(cfg) -> dict:
    """``task=segment``: every segmenter against the gold boundaries of the validation split.

    Rule-based segmenters are scored as they are; the learned classifier is trained on training
    traces first (or loaded from its cache). Token-level precision / recall / F1, written to
    ``<run dir>/segment_report.json`` and ``.md`` and printed.
    """
    import hydra
    from omegaconf import OmegaConf

    from rtd_lab.data.datamodule import encode_example
    from rtd_lab.train import prepare_teacher

    datamodule = hydra.utils.instantiate(cfg.data)
    benchmark = datamodule.benchmark
    teacher, tokenizer, _ = prepare_teacher(cfg, benchmark)
    datamodule.connect(tokenizer)
    datamodule.setup()
    val = datamodule.encoded["val"]
    gold = [set(x.boundary_pos) for x in val]
    fmt = benchmark.format
    report: dict[str, dict] = {}
    for rule in RULES:
        predicted = [
            set(
                encode_example(
                    x.example, tokenizer, fmt, segmenter=lambda t, r=rule: rule_boundaries(r, t, fmt)
                ).boundary_pos
            )
            for x in val
        ]
        report[rule] = _set_prf(predicted, gold)
    info = apply_learned_boundaries(
        datamodule,
        teacher.model,
        hydra.utils.to_absolute_path(cfg.paths.cache_dir),
        key_parts={
            "teacher": str(teacher.model.name_or_path),
            "benchmark": OmegaConf.to_container(cfg.data.benchmark, resolve=True),
        },
        settings=OmegaConf.to_container(cfg.segment, resolve=True),
    )
    report["learned"] = _set_prf([set(x.boundary_pos) for x in datamodule.encoded["val"]], gold)
    out = Path(cfg.paths.output_dir)
    lines = ["| segmenter | precision | recall | F1 |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} |" for k, v in report.items()]
    text = f"Step boundaries on the validation split ({len(val)} traces), token level:\n\n" + "\n".join(lines) + "\n"
    atomic_write_json(out / "segment_report.json", {"segmenters": report, "classifier": info})

    atomic_write_text(out / "segment_report.md", text)
    print(text)
    return report


def _set_prf(predicted: list[set[int]], gold: list[set[int]]) -> dict:
    tp = sum(len(p & g) for p, g in zip(predicted, gold, strict=True))
    n_pred, n_gold = sum(map(len, predicted)), sum(map(len, gold))
    precision, recall = tp / max(1, n_pred), tp / max(1, n_gold)
    return {"precision": precision, "recall": recall, "f1": 2 * precision * recall / max(1e-12, precision + recall)}
