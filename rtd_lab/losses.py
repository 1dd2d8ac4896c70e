"""Distillation losses as pure functions: tensors in, scalar tensors out, no module state.

Shapes: B batch, T tokens, V vocabulary, K step boundaries (the longest chain in the batch),
D hidden width. Boundary tensors are padded to K; ``mask`` says which boundaries are real, so a
short chain's padding never counts. Equations are those of the RTD paper (Reasoning Trace Distillation).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

IGNORE_INDEX = -100
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


class KDLoss(NamedTuple):
    loss: torch.Tensor  # alpha * T^2 * D + (1 - alpha) * CE
    div: torch.Tensor  # D(p_T, p_S) at temperature T, mean over supervised tokens
    ce: torch.Tensor  # cross-entropy against the labels, mean over supervised tokens


def token_divergence(
    log_p_s: torch.Tensor, log_p_t: torch.Tensor, divergence: str = "forward_kl", beta: float = 0.5
) -> torch.Tensor:
    """Per-token divergence between teacher and student distributions: (N, V), (N, V) → (N,).

        forward_kl:  KL(p_T || p_S) = sum_v p_T (log p_T - log p_S)      (mass-covering, Hinton KD)
        reverse_kl:  KL(p_S || p_T) = sum_v p_S (log p_S - log p_T)      (mode-seeking)
        jsd:         generalized JSD of GKD (Agarwal et al. 2024), m = beta p_T + (1 - beta) p_S,
                     D = beta KL(p_T || m) + (1 - beta) KL(p_S || m);
                     beta = 0 and beta = 1 are taken as forward and reverse KL (as TRL does),
                     since the mixture formula itself vanishes at both ends.

    Inputs are log-probabilities (already divided by the temperature and log-softmaxed).
    """
    if divergence == "forward_kl" or (divergence == "jsd" and beta == 0.0):
        return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    if divergence == "reverse_kl" or (divergence == "jsd" and beta == 1.0):
        return (log_p_s.exp() * (log_p_s - log_p_t)).sum(-1)
    if divergence != "jsd":
        raise ValueError(f"method.divergence must be one of {list(DIVERGENCES)}, got {divergence!r}")
    log_m = torch.logsumexp(torch.stack([log_p_t + math.log(beta), log_p_s + math.log(1 - beta)]), dim=0)
    kl_t = (log_p_t.exp() * (log_p_t - log_m)).sum(-1)
    kl_s = (log_p_s.exp() * (log_p_s - log_m)).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.7,
    temperature: float = 4.0,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    num_items=None,
    chunk_size: int | None = None,
) -> KDLoss:
    """Standard knowledge distillation (Hinton et al. 2015), the RTD paper's baseline.

        L_KD = alpha * T^2 * KL(p_T || p_S) + (1 - alpha) * CE(p_S, y),   p_X = softmax(z_X / T)

    with KL(p_T || p_S) replaceable by any ``token_divergence`` (``divergence``, ``beta``).

    Args:
        student_logits: (B, T, V); position t predicts ``labels[:, t]`` (already shifted).
        teacher_logits: (B, T, V), same alignment.
        labels: (B, T) token ids, ``-100`` where nothing is supervised (prompt, padding).
        alpha: weight of the distillation term, in [0, 1].
        temperature: T > 0; the T^2 factor keeps gradient scale independent of T.
        divergence: "forward_kl" (the RTD paper's), "reverse_kl" or "jsd" (with ``beta`` in [0, 1]).
        num_items: the denominator of the means, a number: the batch's count of supervised tokens
            (under DDP the global batch's count / world size, ``ReasoningModule.item_counts``);
            None: counted here, from ``labels``.
        chunk_size: None: all N supervised positions at once. An integer: the same sums over chunks
            of that many positions, each recomputed in the backward pass (activation checkpointing),
            so the float32 (N, V) softmax intermediates exist one chunk at a time: at a 150k
            vocabulary they are what dominates KD's memory. Value and gradient equal the unchunked
            ones up to float rounding (tests/test_losses.py).

    Only positions with ``labels != -100`` count, so the prompt is never distilled.
    """
    mask = labels != IGNORE_INDEX  # (B, T)
    n = _count(mask.sum(), num_items)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"method.chunk_size must be >= 1 or null, got {chunk_size}")
    rows = mask.reshape(-1).nonzero().squeeze(1)  # the N supervised positions, flat, in the order of [mask]
    step = chunk_size or max(1, rows.numel())
    checkpointed = chunk_size is not None and torch.is_grad_enabled() and student_logits.requires_grad
    div = ce = None
    for start in range(0, max(1, rows.numel()), step):  # one pass even with N = 0: a 0 still in the graph
        if chunk_size is None:
            part_mask = mask
        else:  # this chunk's positions as a (B, T) mask: gathered like the whole, never a (B*T, V) copy
            part_mask = torch.zeros_like(mask)
            part_mask.view(-1)[rows[start : start + step]] = True
        part = (student_logits, teacher_logits, labels, part_mask, temperature, divergence, beta)
        d, c = (
            torch.utils.checkpoint.checkpoint(_kd_sums, *part, use_reentrant=False) if checkpointed else _kd_sums(*part)
        )
        div, ce = (d, c) if div is None else (div + d, ce + c)
    return _kd_terms(div, ce, n, alpha, temperature)


def _kd_terms(div_sum: torch.Tensor, ce_sum: torch.Tensor, n, alpha: float, temperature: float) -> KDLoss:
    """The weighted sum shared by dense and sparse KD, from the sums over the N supervised positions."""
    div, ce = div_sum / n, ce_sum / n
    return KDLoss(alpha * temperature**2 * div + (1 - alpha) * ce, div, ce)


def _kd_sums(student, teacher, labels, mask, temperature, divergence, beta):
    """(sum of the token divergences, sum of the CE) over the (B, T, V) logits' positions ``mask``:
    gathered here, inside the checkpointed function when chunked, so no (N, V) copy outlives a chunk."""
    s = student[mask].float()
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher[mask].float() / temperature, dim=-1)  # the gathered copy is freed at once
    div = token_divergence(log_p_s, log_p_t, divergence, beta).sum()
    return div, F.cross_entropy(s, labels[mask], reduction="sum")


TAIL_FLOOR = math.log(1e-20)  # a tail bin's log-mass never goes below this (k = V leaves no tail)


def sparse_log_probs(
    student_logits: torch.Tensor,
    values: torch.Tensor,
    indices: torch.Tensor,
    lse: torch.Tensor,
    temperature: float,
    tail: str = "bucket",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student log-distributions over the teacher's top-k tokens (+ the tail), at T.

    Args:
        student_logits: (N, V) student logits at the supervised positions.
        values, indices: (N, k) the teacher's k largest logits and their token ids (offline cache).
        lse: (N,) logsumexp_v(z_T[v] / T) over the teacher's whole vocabulary.
        tail: how the mass outside the top-k is handled:
            "bucket" (default): both distributions are coarsened to k + 1 bins, the teacher's top-k
                tokens and one bin for all the rest. The teacher's k probabilities are exact
                (p_T(v) = exp(z_v / T - lse)) and its tail bin gets the remaining mass; the student's
                bins are its own full-softmax probabilities of the same k tokens and of the rest.
                Any divergence of these (k + 1)-bin distributions is at most the dense one (data
                processing inequality) and equals it when k = V; the student's tail is pushed to
                hold exactly the teacher's tail mass, without a per-token target inside it.
            "renormalize": the tail is dropped; teacher and student are both renormalised over the
                teacher's top-k tokens (the student's mass outside them is then left to the CE term).

    Returns (log_p_s, log_p_t), each (N, k + 1) for "bucket" or (N, k) for "renormalize".
    """
    s = student_logits.float() / temperature
    top_s = s.gather(-1, indices)  # (N, k)
    top_t = values.float() / temperature
    if tail not in ("bucket", "renormalize"):
        raise ValueError(f"teacher_cache.tail must be bucket or renormalize, got {tail!r}")
    # k = V: there is no tail, and its float rounding (1 - a mass of 1 - 1e-7) would only add noise.
    if tail == "renormalize" or indices.size(-1) >= s.size(-1):
        return F.log_softmax(top_s, dim=-1), F.log_softmax(top_t, dim=-1)
    lse_s = torch.logsumexp(s, dim=-1, keepdim=True)  # (N, 1)
    rest_s = torch.logsumexp(s.scatter(-1, indices, float("-inf")), dim=-1, keepdim=True) - lse_s
    log_top_t = top_t - lse.float().unsqueeze(-1)  # exact teacher log-probs of its top-k
    mass_t = log_top_t.exp().sum(-1, keepdim=True).clamp(max=1.0)
    rest_t = torch.log1p(-mass_t).clamp(min=TAIL_FLOOR)
    log_p_s = torch.cat([top_s - lse_s, rest_s.clamp(min=TAIL_FLOOR)], dim=-1)
    log_p_t = torch.cat([log_top_t, rest_t], dim=-1)
    return log_p_s, log_p_t


def sparse_kd_loss(
    student_logits: torch.Tensor,
    values: torch.Tensor,
    indices: torch.Tensor,
    lse: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.7,
    temperature: float = 4.0,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    tail: str = "bucket",
    num_items=None,
) -> KDLoss:
    """``kd_loss`` with the teacher as stored by the offline cache: top-k logits, not all V.

        L_KD = alpha * T^2 * D(p_T^(k), p_S^(k)) + (1 - alpha) * CE(p_S, y)

    p^(k) are the top-k distributions of ``sparse_log_probs`` (``tail`` says how the rest of the
    vocabulary counts). Shapes as ``kd_loss``, with values / indices (B, T, k) and lse (B, T) in
    place of the teacher's (B, T, V) logits. The CE term is unchanged: it needs only the labels.
    """
    mask = labels != IGNORE_INDEX
    n = _count(mask.sum(), num_items)
    s = student_logits[mask].float()
    log_p_s, log_p_t = sparse_log_probs(s, values[mask], indices[mask], lse[mask], temperature, tail)
    div = token_divergence(log_p_s, log_p_t, divergence, beta).sum()
    return _kd_terms(div, F.cross_entropy(s, labels[mask], reduction="sum"), n, alpha, temperature)


def _count(local: torch.Tensor, num_items=None) -> torch.Tensor:
    """The denominator of a mean over items: ``num_items`` when given, else the local count; 1 when
    there is nothing to average (the sum is 0 then, and so is the mean)."""
    n = local if num_items is None else torch.as_tensor(num_items, device=local.device)
    return torch.where(n > 0, n, torch.ones_like(n))


def gather_boundaries(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Hidden states at step boundaries: (B, T, D), (B, K) → (B, K, D)."""
    index = positions.unsqueeze(-1).expand(-1, -1, hidden.size(-1))
    return hidden.gather(1, index)


def transitions(h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Step transition vectors delta_i = h_{i+1} - h_i: (B, K, D), (B, K) → (B, K-1, D), (B, K-1).

    A transition is real only when both of its boundaries are.
    """
    return h[:, 1:] - h[:, :-1], mask[:, 1:] & mask[:, :-1]


def _per_chain_mean(per_boundary: torch.Tensor, mask: torch.Tensor, num_items=None) -> torch.Tensor:
    """(B, K) values → mean over each chain's real entries, then over chains that have any.

    A batch with no real entry gives 0 that is still attached to the graph (DDP needs every
    parameter to get a gradient, and a NaN would poison the run). ``num_items``: the number of chains
    with a real entry (see ``kd_loss``); None: counted here.
    """
    mask = mask.to(per_boundary.dtype)
    counts = mask.sum(dim=1)  # (B,)
    has_any = counts > 0
    n_chains = _count(has_any.sum(), num_items)
    if not has_any.any():
        return (per_boundary * 0.0).sum()
    per_chain = (per_boundary * mask).sum(dim=1)[has_any] / counts[has_any]
    return per_chain.mean() if num_items is None else per_chain.sum() / n_chains


def align_loss(h_s_proj: torch.Tensor, h_t: torch.Tensor, mask: torch.Tensor, num_items=None) -> torch.Tensor:
    """Step-boundary representation alignment (the RTD paper):

        L_align = (1/k) * sum_i (1 - cos(f(h_S_i), h_T_i))

    Args:
        h_s_proj: (B, K, D_T) student boundary states already projected, f(h_S).
        h_t: (B, K, D_T) teacher boundary states.
        mask: (B, K) bool, True for the k real boundaries of each chain.

    Averaged over each chain's k boundaries, then over the chains of the batch.
    """
    cos = F.cosine_similarity(h_s_proj.float(), h_t.float(), dim=-1, eps=1e-8)  # (B, K)
    return _per_chain_mean(1.0 - cos, mask, num_items)


def coherence_loss(
    delta_s_proj: torch.Tensor, delta_t: torch.Tensor, mask: torch.Tensor, num_items=None
) -> torch.Tensor:
    """Reasoning coherence loss (the RTD paper), on step transition vectors delta_i = h_{i+1} - h_i:

        L_coherence = (1/(k-1)) * sum_i (1 - cos(g(delta_S_i), delta_T_i))^2

    Args:
        delta_s_proj: (B, K-1, D_T) student transitions already projected, g(delta_S).
        delta_t: (B, K-1, D_T) teacher transitions.
        mask: (B, K-1) bool, True for the k-1 real transitions of each chain (see ``transitions``).

    Chains with k < 2 have no transition and contribute nothing; a batch of only such chains
    gives 0, never NaN. Squaring, as the RTD paper says, tolerates small deviations and punishes large ones.
    """
    cos = F.cosine_similarity(delta_s_proj.float(), delta_t.float(), dim=-1, eps=1e-8)  # (B, K-1)
    return _per_chain_mean((1.0 - cos) ** 2, mask, num_items)


def hint_loss(h_s_proj: torch.Tensor, h_t: torch.Tensor, mask: torch.Tensor, num_items=None) -> torch.Tensor:
    """FitNets hint loss (Romero et al. 2015), at every token rather than at step boundaries:

        L_hint = mean over real tokens t and dimensions d of (W h_S[t] - h_T[t])_d^2

    Args:
        h_s_proj: (B, T, D_T) student hidden states of one layer, already projected (W h_S).
        h_t: (B, T, D_T) teacher hidden states of the matched layer.
        mask: (B, T) True on real (non-padding) tokens.
    """
    mask = mask.bool()
    n = _count(mask.sum(), num_items)
    if not mask.any():
        return (h_s_proj * 0.0).sum()
    if num_items is None:
        return F.mse_loss(h_s_proj[mask].float(), h_t[mask].float())
    return F.mse_loss(h_s_proj[mask].float(), h_t[mask].float(), reduction="sum") / (n * h_t.size(-1))


def cosine_hidden_loss(h_s_proj: torch.Tensor, h_t: torch.Tensor, mask: torch.Tensor, num_items=None) -> torch.Tensor:
    """Cosine-embedding hidden-state loss (DistilBERT's L_cos, Sanh et al. 2019), at every supervised token:

        L_cos = mean over masked tokens t of (1 - cos(W h_S[t], h_T[t]))

    Args:
        h_s_proj: (B, T, D_T) student hidden states, already projected (W h_S).
        h_t: (B, T, D_T) teacher hidden states.
        mask: (B, T) True on the tokens to match.
    """
    mask = mask.bool()
    n = _count(mask.sum(), num_items)
    if not mask.any():
        return (h_s_proj * 0.0).sum()
    cos = F.cosine_similarity(h_s_proj[mask].float(), h_t[mask].float(), dim=-1)  # (N,)
    return (1.0 - cos).sum() / n


def other_chain_baseline(target: torch.Tensor, mask: torch.Tensor, loss_fn, shifts: int = 16) -> torch.Tensor:
    """The loss of predicting each chain's vectors by another chain's teacher vectors at the same step.

    Args:
        target: (B, K, D) teacher boundary states or transitions.
        mask: (B, K) bool, the real entries.
        loss_fn: ``align_loss`` or ``coherence_loss``.
        shifts: how many pairings to average: chain b is predicted by chain (b + r) mod B, r = 1..shifts.

    A permutation null: the loss a prediction gets that is a real teacher trajectory, but of the wrong
    chain. A student below it predicts its own chain's vectors better than a teacher vector of another
    chain does; on entries where a chain has step i and its partner has not, the pair is skipped.
    """
    n = target.size(0)
    if n < 2 or not mask.any():
        raise ValueError("an other-chain baseline needs at least two chains with real entries")
    losses = []
    for r in range(1, min(shifts, n - 1) + 1):
        both = mask & mask.roll(r, dims=0)
        if both.any():
            losses.append(loss_fn(target.roll(r, dims=0), target, both))
    if not losses:
        raise ValueError("no two chains share a step to compare")
    return torch.stack(losses).mean()


def mean_direction_baseline(target: torch.Tensor, mask: torch.Tensor, loss_fn) -> torch.Tensor:
    """The loss a predictor gets that outputs one vector, the mean direction of the targets, for all.

    Args:
        target: (B, K, D) teacher boundary states or transitions.
        mask: (B, K) bool, the real entries.
        loss_fn: ``align_loss`` or ``coherence_loss``.

    A chance level computed from the teacher alone: a student whose loss is far below it matches
    what is specific to each chain and step, not only the direction every transition shares.
    The curriculum's stage thresholds are fractions of it.
    """
    if not mask.any():
        raise ValueError("no real entry to compute a baseline over")
    unit = F.normalize(target.float(), dim=-1)
    mean = unit[mask].mean(dim=0)  # (D,)
    return loss_fn(mean.expand_as(unit), target, mask)
