"""SEGMENT (the RTD paper's teacher reasoning decomposition): where does each step of a trace conclude?

The rule-based segmenters are in ``rtd_lab.data.segmenters``. The learned segmenter (the RTD paper:
a lightweight classifier on teacher hidden states) is ``BoundaryClassifier``: for every completion
token, the frozen teacher's hidden states at that token (every layer, concatenated), standardised,
go through a small MLP that outputs P(a step concludes here). It is trained, with class-balanced
BCE, where gold boundaries are known — the synthetic benchmark's value tokens, GSM8K's line ends —
on training-split traces, and reported with token-level precision, recall and F1 on validation-split
traces it never saw. Cached on disk by a hash of the teacher, the benchmark and its settings.

``data.boundaries`` picks the source RTD (and every boundary-based loss) trains with: ``gold``,
``learned`` (the classifier's boundaries computed once, with the data), ``learned_online`` (the
classifier run on the teacher's states of every batch, as the RTD paper trains: ``online_boundaries``),
or a rule name.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rtd_lab.data.batch import Collator, Encoded, move_batch
from rtd_lab.data.training_set import Splits, with_boundaries
from rtd_lab.prm import ProcessRewardModel, fit_scorer
from rtd_lab.utils import build_or_load

log = logging.getLogger(__name__)
SEGMENT_CACHE_VERSION = 2  # 2: decision threshold tuned for F1 on the training tokens


# ---- the learned segmenter ----------------------------------------------------------------------
class BoundaryClassifier(ProcessRewardModel):
    """Standardised per-token teacher features → MLP → logit of P(a step concludes at this token)."""

    threshold: float = 0.5  # P >= threshold marks a boundary (set from the trained classifier's report)


@torch.no_grad()
def token_features(teacher_model, batch: dict) -> torch.Tensor:
    """(B, T, (L + 1) * D_T): every layer's hidden state at every token."""
    out = teacher_model(input_ids=batch["input_ids"], output_hidden_states=True, use_cache=False)
    return features_of(out.hidden_states)


def features_of(hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The classifier's input from a forward pass's ``hidden_states`` (L + 1 of (B, T, D_T), the
    embeddings first): (B, T, (L + 1) * D_T), detached."""
    return torch.cat([h.detach().float() for h in hidden_states], dim=-1)


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

    def build(tmp: Path) -> dict:
        clf, report = train_segmenter(teacher_model, train, heldout, pad_id, **kwargs)
        save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, str(tmp / "segmenter.safetensors"))
        return {"n_features": clf.mean.numel(), "hidden": kwargs["hidden"], "report": asdict(report)}

    parts, marker = {**key_parts, **kwargs}, "segmenter.json"
    path, meta = build_or_load(
        cache_dir, "segmenters", SEGMENT_CACHE_VERSION, parts, marker, build, "boundary classifier"
    )
    key = meta["key"]
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


@torch.no_grad()
def online_boundaries(clf, teacher_model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's boundaries for a training batch, from the teacher's states of that batch:
    (B, K) positions and (B, K) mask, K the most any row has (>= 1). The same positions as
    ``predict_boundaries`` gives the batch's examples: completion tokens (labelled, not <eos>)
    with P >= the classifier's threshold."""
    return boundaries_from_features(clf, token_features(teacher_model, batch), batch)


@torch.no_grad()
def boundaries_from_features(clf, features: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``online_boundaries`` from the teacher's features of the batch already computed (``features_of``
    on a forward pass the caller makes anyway, as on-policy RTD's teacher pass on the student's samples)."""
    input_ids = batch["input_ids"]
    T = input_ids.size(1)
    probs = torch.sigmoid(clf(features))  # (B, T)
    last = batch["attention_mask"].sum(1, keepdim=True) - 1  # the <eos> of each row
    completion = (batch["labels"] != -100) & (torch.arange(T, device=input_ids.device) < last)
    hit = (probs >= clf.threshold) & completion
    counts = hit.sum(1)
    K = max(1, int(counts.max()))
    # Row-wise positions of the hits, in order: sort the hit positions first (stable), keep K columns.
    order = torch.argsort((~hit).to(torch.int8), dim=1, stable=True)[:, :K]
    mask = torch.arange(K, device=input_ids.device) < counts[:, None]
    return torch.where(mask, order, torch.zeros_like(order)), mask


@dataclass(frozen=True)
class SegmenterSettings:
    """The config's ``segment:`` block; its defaults live in conf/config.yaml."""

    n_train_examples: int  # training traces with gold boundaries (held out: the validation split)
    hidden: int  # width of the classifier's hidden layer
    epochs: int


def segmenter_for(splits: Splits, pad_id: int, teacher_model, cache_dir, key_parts: dict, settings: SegmenterSettings):
    """The classifier of ``settings``, trained on gold boundaries of training traces (or loaded), and its
    info (cache path, held-out report)."""
    n = settings.n_train_examples
    train = splits["train"]
    train = train[:: max(1, len(train) // n)][:n]  # evenly over the (depth-ordered) split
    return load_or_train_segmenter(
        teacher_model,
        train,
        splits["val"],
        pad_id,
        cache_dir,
        key_parts={**key_parts, "n_train_examples": n},
        hidden=settings.hidden,
        epochs=settings.epochs,
    )


def apply_learned_boundaries(splits: Splits, pad_id: int, teacher_model, clf) -> Splits:
    """The train and val splits with the boundaries the classifier ``clf`` (``segmenter_for``) predicts
    from the teacher's states, instead of the gold ones."""
    for split in ("train", "val"):
        splits = with_boundaries(splits, split, predict_boundaries(clf, teacher_model, splits[split], pad_id))
    return splits


def set_prf(predicted: list[set[int]], gold: list[set[int]]) -> dict:
    """Token-level precision, recall and F1 of predicted boundary sets against gold ones."""
    tp = sum(len(p & g) for p, g in zip(predicted, gold, strict=True))
    n_pred, n_gold = sum(map(len, predicted)), sum(map(len, gold))
    precision, recall = tp / max(1, n_pred), tp / max(1, n_gold)
    return {"precision": precision, "recall": recall, "f1": 2 * precision * recall / max(1e-12, precision + recall)}
