"""The RTD paper's diagnostics, computed on the test split after training (``diagnostics:`` in the config).

- **Coherence drift**: linear CKA (Kornblith et al. 2019) between the student's and the teacher's
  hidden states at the boundary of step 1, 2, 3, ... of the gold test traces, over chains of one
  depth (the deepest for the curve). Biased and debiased (Song et al. 2012's unbiased HSIC).
- **Transition-cosine AUROC**: on the student's own greedy traces, the cosine between the projected
  student transition and the teacher's, cos(W δ_S_i, δ_T_i) with δ_i = h_i − h_{i−1} (h_0: the last
  prompt token), as a score for "step i is correct"; AUROC over every step of the test set
  (torchmetrics' ``BinaryAUROC``). W is RTD's learned g where the method has one, else a
  least-squares map fitted on the gold validation traces.
- **Step vs chain accuracy gap** by depth.
- **Self-consistency** (Wang et al. 2023): k sampled student traces, majority vote on the answer.
- **Post-training quantisation**: the student evaluated again with its weights quantised to 8 and 4
  bits (``rtd_lab.quantize``: HQQ, weight-only, groups of 128, on the CPU).
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import BinaryAUROC
from torchmetrics.utilities import dim_zero_cat
from tqdm.auto import tqdm

from rtd_lab.data.batch import Collator, encode_example, move_batch
from rtd_lab.data.example import ReasoningExample
from rtd_lab.losses import gather_boundaries
from rtd_lab.models.build import merged_copy
from rtd_lab.models.teacher import layer_states
from rtd_lab.quantize import BITS as QUANT_BITS
from rtd_lab.quantize import quantize_weights
from rtd_lab.traces.teacher import completion_to_steps

log = logging.getLogger(__name__)


def linear_cka(x: torch.Tensor, y: torch.Tensor, debiased: bool = False) -> torch.Tensor:
    """Linear CKA between representations x (n, d_x) and y (n, d_y) of the same n inputs.

        CKA = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F),   X_c, Y_c column-centred

    ``debiased=True`` replaces each HSIC by its unbiased estimator (Song et al. 2012), written in
    feature space as in Kornblith et al.'s reference implementation; it needs n > 3.
    """
    x, y = x.double(), y.double()
    x, y = x - x.mean(0, keepdim=True), y - y.mean(0, keepdim=True)
    xy, xx, yy = (x.T @ y).square().sum(), (x.T @ x).square().sum(), (y.T @ y).square().sum()
    if debiased:
        n = x.size(0)
        if n <= 3:
            raise ValueError(f"debiased CKA needs more than 3 examples, got {n}")
        rx, ry = x.square().sum(1), y.square().sum(1)  # squared row norms

        def unbiased(dot, ra, rb):
            return dot - n / (n - 2) * (ra @ rb) + ra.sum() * rb.sum() / ((n - 1) * (n - 2))

        xy, xx, yy = unbiased(xy, rx, ry), unbiased(xx, rx, rx), unbiased(yy, ry, ry)
    return xy / (xx.sqrt() * yy.sqrt())


class BoundaryCKA(Metric):
    """Linear CKA between student and teacher boundary states, for each (chain depth, step index).

    ``update`` takes (B, K, D_S), (B, K, D_T), the (B, K) boundary mask and the (B,) chain depths;
    ``compute`` returns ``{depth: {step: cka}}`` for every group of at least ``min_examples`` chains.
    Chains are grouped by depth because pooling them confounds the measurement: at step k, the
    chains that end there and those that go on differ along one large shared direction (both models
    predict "####" vs ";" next), which alone drives pooled CKA to ≈ 1 whatever else the student does.
    States are concatenated across DDP ranks (CKA does not decompose into per-rank sums).
    """

    full_state_update = False

    def __init__(self, debiased: bool = False, min_examples: int = 10):
        super().__init__()
        self.debiased, self.min_examples = debiased, min_examples
        self.add_state("student", default=[], dist_reduce_fx="cat")
        self.add_state("teacher", default=[], dist_reduce_fx="cat")
        self.add_state("step", default=[], dist_reduce_fx="cat")
        self.add_state("depth", default=[], dist_reduce_fx="cat")

    def update(self, h_student: torch.Tensor, h_teacher: torch.Tensor, mask: torch.Tensor, depth: torch.Tensor) -> None:
        steps = torch.arange(1, mask.size(1) + 1, device=mask.device).expand_as(mask)
        self.student.append(h_student[mask].float())
        self.teacher.append(h_teacher[mask].float())
        self.step.append(steps[mask])
        self.depth.append(depth.to(mask.device).unsqueeze(1).expand_as(mask)[mask])

    def compute(self) -> dict[int, dict[int, float]]:
        s, t = dim_zero_cat(self.student), dim_zero_cat(self.teacher)
        step, depth = dim_zero_cat(self.step), dim_zero_cat(self.depth)
        out: dict[int, dict[int, float]] = {}
        for d in sorted(set(depth.tolist())):
            for k in sorted(set(step[depth == d].tolist())):
                rows = (depth == d) & (step == k)
                if int(rows.sum()) >= self.min_examples:
                    out.setdefault(int(d), {})[int(k)] = float(linear_cka(s[rows], t[rows], self.debiased))
        return out


def _layer_states(model, batch: dict, positions: torch.Tensor, layer: int | str) -> torch.Tensor:
    out = model(input_ids=batch["input_ids"], output_hidden_states=True, use_cache=False)
    return gather_boundaries(layer_states(out.hidden_states, layer), positions)


@torch.no_grad()
def boundary_cka(student, teacher_model, loader, student_layer: int, teacher_layer: int, device) -> dict:
    """CKA by step index on gold traces (teacher forcing). The coherence-drift curve ``cka`` is that
    of the deepest chains (every step index, one chain length); ``cka_by_depth`` has every depth."""
    biased, debiased = BoundaryCKA(), BoundaryCKA(debiased=True)
    for batch in tqdm(loader, desc="CKA", leave=False):
        batch = move_batch(batch, device)
        pos, mask = batch["boundary_pos"], batch["boundary_mask"]
        h_s = _layer_states(student, batch, pos, student_layer)
        h_t = _layer_states(teacher_model, batch, pos, teacher_layer)
        biased.update(h_s, h_t, mask, batch["depth"])
        debiased.update(h_s, h_t, mask, batch["depth"])
    by_depth, by_depth_debiased = biased.compute(), debiased.compute()
    deepest = max(by_depth) if by_depth else None
    return {
        "cka_depth": deepest,
        "cka": by_depth.get(deepest, {}),
        "cka_debiased": by_depth_debiased.get(deepest, {}),
        "cka_by_depth": by_depth,
    }


@torch.no_grad()
def _transitions(student, teacher_model, encoded, pad_id, student_layer, teacher_layer, device, batch_size=128):
    """Per chain: (δ_S (k, D_S), δ_T (k, D_T)), δ_i = h_i − h_{i−1}, h_0 the last prompt token."""
    collate = Collator(pad_id)
    out = []
    for start in tqdm(range(0, len(encoded), batch_size), desc="transitions", leave=False):
        part = encoded[start : start + batch_size]
        batch = move_batch(collate(part), device)
        K = max(len(x.boundary_pos) for x in part) + 1
        pos = torch.zeros(len(part), K, dtype=torch.long, device=device)
        for b, x in enumerate(part):
            pos[b, : len(x.boundary_pos) + 1] = torch.tensor([x.prompt_len - 1, *x.boundary_pos])
        h_s = _layer_states(student, batch, pos, student_layer)
        h_t = _layer_states(teacher_model, batch, pos, teacher_layer)
        for b, x in enumerate(part):
            k = len(x.boundary_pos)
            out.append(((h_s[b, 1 : k + 1] - h_s[b, :k]).cpu(), (h_t[b, 1 : k + 1] - h_t[b, :k]).cpu()))
    return out


def least_squares_map(delta_s: torch.Tensor, delta_t: torch.Tensor) -> nn.Module:
    """W minimising ||δ_S W^T − δ_T||²: the projection for methods that learned none."""
    w = torch.linalg.lstsq(delta_s.double(), delta_t.double()).solution.T.float()  # (D_T, D_S)
    proj = nn.Linear(w.size(1), w.size(0), bias=False)
    proj.weight.data.copy_(w)
    return proj


@torch.no_grad()
def transition_auroc(
    module, teacher_model, datamodule, evaluator, records: list[dict], student_layer: int, teacher_layer: int, device
) -> dict:
    """AUROC of cos(W δ_S_i, δ_T_i) as a predictor of step i of the student's own trace being right."""
    benchmark, tokenizer = evaluator.benchmark, evaluator.tokenizer
    fmt, pad = benchmark.format, tokenizer.pad_token_id
    student = module.student
    learned = module.transition_projection()
    if learned is not None:  # RTD: the map its coherence loss learned
        proj, how = copy.deepcopy(learned).cpu().float(), "the method's learned g"
    else:
        val = _transitions(student, teacher_model, datamodule.encoded["val"], pad, student_layer, teacher_layer, device)
        proj = least_squares_map(torch.cat([s for s, _ in val]), torch.cat([t for _, t in val]))
        how = "least squares on the gold validation traces"
    gold = {x.example.uid: x.example for x in datamodule.encoded["test"]}
    encoded, labels, unreadable = [], [], 0
    for r in records:
        ex = gold[r["uid"]]
        parsed = completion_to_steps(r["completion"], fmt, benchmark.parse_completion)
        if parsed is None:
            unreadable += 1
            continue
        steps, answer = parsed
        encoded.append(encode_example(ReasoningExample(ex.uid, ex.question, steps, answer, ex.depth), tokenizer, fmt))
        if hasattr(benchmark, "step_marks"):  # a benchmark with several valid orders says which steps are right
            labels.append(benchmark.step_marks(ex, r["completion"])[: len(steps)])
        else:
            labels.append([i < len(ex.steps) and s.value == ex.steps[i].value for i, s in enumerate(steps)])
    if not encoded:
        return {"transition_auroc": None, "transition_projection": how, "n_steps": 0, "unreadable_traces": unreadable}
    chains = _transitions(student, teacher_model, encoded, pad, student_layer, teacher_layer, device)
    scores = torch.cat([F.cosine_similarity(proj(s), t, dim=-1) for s, t in chains])
    target = torch.tensor([ok for chain in labels for ok in chain], dtype=torch.long)
    auroc = None
    if 0 < int(target.sum()) < len(target):  # AUROC needs both classes
        auroc = float(BinaryAUROC()(scores, target))
    return {
        "transition_auroc": auroc,
        "transition_projection": how,
        "n_steps": len(target),
        "correct_steps": int(target.sum()),
        "mean_cosine_correct": float(scores[target == 1].mean()) if target.any() else None,
        "mean_cosine_wrong": float(scores[target == 0].mean()) if (target == 0).any() else None,
        "unreadable_traces": unreadable,
    }


def step_chain_gap(metrics: dict[str, float], depths: list[int]) -> dict[str, float]:
    """step accuracy − chain accuracy, overall and per depth."""
    out = {"all": metrics["step_acc"] - metrics["chain_acc"]}
    for d in depths:
        if f"chain_acc/depth_{d}" in metrics:
            out[f"depth_{d}"] = metrics[f"step_acc/depth_{d}"] - metrics[f"chain_acc/depth_{d}"]
    return out


def self_consistency(student, tokenizer, benchmark, examples, k: int, temperature: float, seed: int = 0) -> dict:
    """k sampled traces per question, majority vote on the parsed answer (ties: the first seen)."""
    from rtd_lab.traces.sample import sample_chunk

    rows = sample_chunk(student, tokenizer, benchmark, examples, temperature, k, batch_size=128, seed=seed)
    votes: dict[str, Counter] = {}
    for r in rows:
        _, answer = benchmark.parse_completion(r["completion"])
        if answer is not None:
            votes.setdefault(r["uid"], Counter())[answer] += 1
    correct: dict[int, list[bool]] = {}
    for ex in examples:
        c = votes.get(ex.uid)
        correct.setdefault(ex.depth, []).append(bool(c) and c.most_common(1)[0][0] == ex.answer)
    out = {"k": k, "temperature": temperature}
    out["answer_acc"] = sum(sum(v) for v in correct.values()) / max(1, len(examples))
    out |= {f"answer_acc/depth_{d}": sum(v) / len(v) for d, v in sorted(correct.items())}
    return out


def quantized_metrics(student, evaluator, loader, bits: int) -> dict:
    """Test metrics of the student after post-training quantisation of its weights (``rtd_lab.quantize``)."""
    model = merged_copy(student).cpu().float()
    info = quantize_weights(model, bits)
    metrics, _ = evaluator.evaluate(model, loader, f"int{bits} eval")
    return {"status": "ok", **info, "metrics": metrics}


@dataclass(frozen=True)
class DiagnosticsSettings:
    """The config's ``diagnostics:`` block; its defaults live in conf/config.yaml."""

    enabled: bool
    cka: bool  # linear CKA per step index, student vs teacher boundary states
    transition_auroc: bool  # cos(W delta_S, delta_T) as a step-correctness score, AUROC
    self_consistency_k: int  # sampled traces per question, majority vote (0: off)
    self_consistency_temperature: float
    quantize: list[int]  # post-training weight quantisation bit widths (8 and/or 4; CPU)

    def __post_init__(self) -> None:
        bad = [b for b in self.quantize if b not in QUANT_BITS]
        if bad:
            raise ValueError(f"diagnostics.quantize: bit widths must be among {list(QUANT_BITS)}, got {bad}")


def run_diagnostics(
    settings: DiagnosticsSettings, module, teacher_model, teacher_layer: int, datamodule, evaluator, metrics
) -> dict:
    """Everything above that ``settings`` (the config's ``diagnostics:``) asks for, as one dict."""
    student = module.student
    device = next(student.parameters()).device
    teacher_model = teacher_model.to(device)
    student_layer = module.student_layer
    was_training = student.training
    student.eval()
    out: dict = {"step_chain_gap": step_chain_gap(metrics, evaluator.benchmark.depths)}
    if settings.cka:
        out |= boundary_cka(student, teacher_model, datamodule.test_dataloader(), student_layer, teacher_layer, device)
    if settings.transition_auroc:
        out |= transition_auroc(
            module, teacher_model, datamodule, evaluator, module.test_records, student_layer, teacher_layer, device
        )
    k = settings.self_consistency_k
    if k:
        examples = [x.example for x in datamodule.encoded["test"]]
        t = settings.self_consistency_temperature
        out["self_consistency"] = self_consistency(student, evaluator.tokenizer, evaluator.benchmark, examples, k, t)
    out["quantized"] = {
        f"{bits}bit": quantized_metrics(student, evaluator, datamodule.test_dataloader(), bits)
        for bits in settings.quantize
    }
    student.train(was_training)
    return out


def flat_diagnostics(diag: dict) -> dict[str, float]:
    """Scalars for the logger: ``diag/cka/step_1``, ``diag/transition_auroc``, ``diag/int8/chain_acc``, ..."""
    flat: dict[str, float] = {}
    for name in ("cka", "cka_debiased"):
        flat |= {f"diag/{name}/step_{k}": v for k, v in diag.get(name, {}).items()}
    if diag.get("transition_auroc") is not None:
        flat["diag/transition_auroc"] = diag["transition_auroc"]
    flat |= {f"diag/step_chain_gap/{k}": v for k, v in diag["step_chain_gap"].items()}
    flat |= {f"diag/self_consistency/{k}": v for k, v in diag.get("self_consistency", {}).items() if k != "k"}
    for scheme, q in diag.get("quantized", {}).items():
        flat |= {f"diag/{scheme}/{k}": v for k, v in q.get("metrics", {}).items()}
    return flat
