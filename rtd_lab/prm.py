"""A process reward model (PRM): P(step i of a sampled trace is correct), trained on teacher samples.

Data. The teacher samples ``samples_per_question`` traces for ``n_questions`` training questions at
each of ``temperatures`` (higher temperatures give the wrong steps a scorer needs to see). Every
sampled step is labelled by exact verification: step i is correct iff the value it concludes with
equals the gold value of step i (the benchmark knows every step's value; no ``eval``, the value is
parsed with the benchmark's regular expression). Steps past the gold depth are wrong.

Scorer. A small MLP on features the frozen teacher computes for the sampled trace, at each step:

    x_i = [ h^0_T(b_i), ..., h^L_T(b_i),            teacher hidden states of every layer at the
                                                     step's last token b_i (its boundary)
            mean_t log p_T(y_t | y_<t),  min_t log p_T(y_t | y_<t) ]   over the step's tokens
    r_i = sigmoid(MLP(standardise(x_i)))

trained with class-balanced binary cross-entropy on 90 % of the questions; the other 10 % are
held out and its accuracy and AUROC there are reported (``PRMReport``). The PRM is cached on disk
by a hash of the teacher, the benchmark and these settings, like the teacher itself.

Segmentation of a sampled completion (token ids): every step separator token (" ; ") or answer
marker ("####") closes a step; the step's boundary is the token before it. A separator is credited
to the step it *opens* — writing " ; " instead of " #### " is the decision to take one more step,
so it is judged (by the PRM's features, which include the teacher's log-probability of it) and
rewarded with that step — and "####", the answer and <eos> to the last step, the decision to stop.
Every generated token belongs to exactly one step. (Crediting the separator to the step it closes,
our first version, never judged the decision to continue: students learned to run past the asked
variable with arithmetically right extra steps — experiments/paper_table/HISTORY.md.)
Needs a tokenizer in which the separator and the marker are single tokens (true of the synthetic
benchmark's); other tokenizers get a clear error.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torchmetrics.functional.classification import binary_auroc
from tqdm.auto import tqdm
from transformers import GenerationConfig

from rtd_lab.data.batch import Collator, move_batch
from rtd_lab.models.decode import split_generated
from rtd_lab.utils import build_or_load

log = logging.getLogger(__name__)
PRM_CACHE_VERSION = 2  # 2: separators credited to the step they open
_VALUE = re.compile(r"=\s*(-?\d{1,30})\s*$")  # bounded: a 5,000-digit "value" is no value, not a crash


def marker_ids(tokenizer, fmt) -> tuple[int, int]:
    """Token ids of the step separator and the answer marker; both must be single tokens."""
    ids = []
    for name, text in (("step separator", fmt.step_sep.strip()), ("answer marker", fmt.answer_prefix.strip())):
        enc = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise ValueError(
                f"step_reward segments sampled traces at the {name} {text!r}, which this tokenizer "
                f"splits into {len(enc)} tokens; it needs a tokenizer where it is one token"
            )
        ids.append(enc[0])
    return ids[0], ids[1]


def step_spans(completion: list[int], sep_id: int, answer_id: int) -> list[tuple[int, int, int]]:
    """Split a completion (token ids, eos and padding removed) into steps.

    Returns ``(start, boundary, end)`` per step, positions in ``completion``: the tokens credited
    to the step are ``[start, end)`` — its opening separator (steps after the first), its text, and
    for the last step "####", the answer and whatever follows; ``boundary`` is the last token of
    its text. An empty step (two separators in a row) has its opening separator as boundary.
    """
    spans: list[tuple[int, int, int]] = []
    start = 0
    for pos, tok in enumerate(completion):
        if tok == sep_id or tok == answer_id:
            boundary = max(start, pos - 1)
            if tok == answer_id:  # the decision to stop, and the answer, go with the last step
                spans.append((start, boundary, len(completion)))
                return spans
            spans.append((start, boundary, pos))
            start = pos  # this separator opens the next step
    if start < len(completion):  # no answer marker: an unfinished step (or a dangling separator)
        spans.append((start, len(completion) - 1, len(completion)))
    return spans


def step_value(text: str) -> int | None:
    match = _VALUE.search(text.strip())
    return int(match.group(1)) if match else None


@dataclass
class SampledBatch:
    """Sampled traces re-packed right-padded (as training batches are), with their steps.

    input_ids     (B, T)   prompt + sampled completion (up to and with <eos>), right-padded
    token_step    (B, T)   index of the step a completion token is credited to; -1 on prompt/padding
    boundary_pos  (B, S)   absolute position of each step's boundary token; 0 where padded
    step_mask     (B, S)   True for real steps
    correct       (B, S)   exact verification against the gold step values
    """

    input_ids: torch.Tensor
    token_step: torch.Tensor
    boundary_pos: torch.Tensor
    step_mask: torch.Tensor
    correct: torch.Tensor


def pack_samples(prompt_ids, prompt_mask, generated, examples, tokenizer, sep_id, answer_id) -> SampledBatch:
    """``generated`` (B, P + N) is ``generate``'s output for left-padded prompts (B, P)."""
    eos = tokenizer.eos_token_id
    rows, spans_all, steps_ok = [], [], []
    pairs = split_generated(prompt_ids, prompt_mask, generated, eos)  # (prompt, completion through <eos>)
    for ex, (prompt, completion) in zip(examples, pairs, strict=True):
        completion = completion[:-1] if completion and completion[-1] == eos else completion
        spans = step_spans(completion, sep_id, answer_id)
        gold = [s.value for s in ex.steps]
        ok = []
        for i, (start, boundary, _) in enumerate(spans):
            value = step_value(tokenizer.decode(completion[start : boundary + 1]))
            ok.append(i < len(gold) and value is not None and value == gold[i])
        rows.append((prompt, completion + [eos]))
        spans_all.append(spans)
        steps_ok.append(ok)
    B = len(rows)
    T = max(len(p) + len(c) for p, c in rows)
    S = max(1, max(len(s) for s in spans_all))
    input_ids = torch.full((B, T), tokenizer.pad_token_id, dtype=torch.long)
    token_step = torch.full((B, T), -1, dtype=torch.long)
    boundary_pos = torch.zeros((B, S), dtype=torch.long)
    step_mask = torch.zeros((B, S), dtype=torch.bool)
    correct = torch.zeros((B, S), dtype=torch.bool)
    for b, ((prompt, completion), spans, ok) in enumerate(zip(rows, spans_all, steps_ok, strict=True)):
        n_p = len(prompt)
        input_ids[b, : n_p + len(completion)] = torch.tensor(prompt + completion)
        for i, (start, boundary, end) in enumerate(spans):
            token_step[b, n_p + start : n_p + end] = i
            boundary_pos[b, i] = n_p + boundary
            step_mask[b, i] = True
            correct[b, i] = ok[i]
        if spans:  # <eos> belongs to the last step: stopping is part of finishing the chain
            token_step[b, n_p + len(completion) - 1] = len(spans) - 1
    return SampledBatch(input_ids, token_step, boundary_pos, step_mask, correct)


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(y_t | y_<t) for t >= 1: (B, T, V), (B, T) → (B, T), position 0 set to 0."""
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return F.pad(lp, (1, 0))


def per_step_stats(values: torch.Tensor, token_step: torch.Tensor, n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and min of (B, T) ``values`` over the tokens of each step: two (B, S) tensors."""
    member = token_step[..., None] == torch.arange(n_steps, device=values.device)  # (B, T, S)
    counts = member.sum(1).clamp(min=1)
    mean = (values[..., None] * member).sum(1) / counts
    low = values[..., None].masked_fill(~member, float("inf")).amin(1)
    return mean, torch.where(torch.isinf(low), torch.zeros_like(low), low)


@torch.no_grad()
def step_features(teacher_model: nn.Module, batch: SampledBatch) -> torch.Tensor:
    """x_i of the module docstring for every step: (B, S, (L + 1) * D_T + 2)."""
    out = teacher_model(input_ids=batch.input_ids, output_hidden_states=True, use_cache=False)
    idx = batch.boundary_pos[..., None].expand(-1, -1, out.hidden_states[0].size(-1))
    hidden = [h.float().gather(1, idx) for h in out.hidden_states]  # each (B, S, D_T)
    lp = token_logprobs(out.logits, batch.input_ids)
    mean, low = per_step_stats(lp, batch.token_step, batch.boundary_pos.size(1))
    return torch.cat(hidden + [mean[..., None], low[..., None]], dim=-1)


class ProcessRewardModel(nn.Module):
    """The scorer: standardised teacher features → MLP → logit of P(step correct)."""

    def __init__(self, n_features: int, hidden: int = 64):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(..., F) → (...) logits."""
        return self.net((features - self.mean) / self.std).squeeze(-1)

    @torch.no_grad()
    def score(self, teacher_model: nn.Module, batch: SampledBatch) -> torch.Tensor:
        """(B, S) rewards in (0, 1); 0 where there is no step."""
        return torch.sigmoid(self(step_features(teacher_model, batch))) * batch.step_mask


def fit_scorer(model: ProcessRewardModel, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int):
    """Standardise on ``x``, then full-batch class-balanced BCE (the rarer class weighs as much);
    returns the model in eval mode. Shared by the PRM and the boundary classifier."""
    model.mean.copy_(x.mean(0))
    model.std.copy_(x.std(0).clamp(min=1e-4))
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.net.parameters(), lr=lr, weight_decay=0.01)
    pos_weight = (1 - y.mean()) / y.mean()
    for _ in tqdm(range(epochs), desc="fit scorer", leave=False):
        loss = F.binary_cross_entropy_with_logits(model(x), y, pos_weight=pos_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@dataclass
class PRMReport:
    n_train_steps: int
    n_heldout_steps: int
    positive_rate: float  # fraction of sampled steps that are correct
    heldout_accuracy: float  # at P >= 0.5
    heldout_auroc: float
    positive_rate_by_temperature: dict[str, float]
    gold_added: bool  # the gold traces were scored too (include_gold)
    train_seconds: float


@dataclass
class PRMConfig:
    n_questions: int = 1200  # training questions sampled (spread over depths by the split's order)
    samples_per_question: int = 2
    temperatures: tuple[float, ...] = (1.0, 2.0, 3.0)
    hidden: int = 64
    epochs: int = 300  # full-batch passes of the head (the features are computed once)
    lr: float = 3e-3
    heldout_fraction: float = 0.1
    # Also score the gold traces (every step correct). "auto": only when the teacher sampled no
    # correct step at all (an untrained teacher, as in smoke tests), with a warning and a mark
    # in the report; real teachers never need it.
    include_gold: bool | str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        self.temperatures = tuple(float(t) for t in self.temperatures)
        if self.n_questions < 10:
            raise ValueError(f"method.prm.n_questions must be >= 10, got {self.n_questions}")
        if self.samples_per_question < 1:
            raise ValueError(f"method.prm.samples_per_question must be >= 1, got {self.samples_per_question}")
        if not self.temperatures or min(self.temperatures) <= 0:
            raise ValueError(f"method.prm.temperatures must be a non-empty list of values > 0, got {self.temperatures}")
        if self.include_gold not in (True, False, "auto"):
            raise ValueError(f"method.prm.include_gold must be true, false or auto, got {self.include_gold!r}")
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"method.prm.heldout_fraction must be in (0, 1), got {self.heldout_fraction}")


GOLD = 0.0  # the "temperature" recorded for gold traces scored as if sampled


@torch.no_grad()
def sample_teacher_steps(
    teacher_model, encoded, tokenizer, fmt, cfg: PRMConfig, batch_size: int, max_new: int, gold: bool = False
):
    """Features, labels, question ids and temperatures of every step the teacher samples.

    ``gold=True`` scores the gold traces instead (one per question, every step correct).
    """
    sep_id, answer_id = marker_ids(tokenizer, fmt)
    # Evenly over the split (it is ordered by depth), so every depth is represented.
    stride = max(1, len(encoded) // cfg.n_questions)
    questions = encoded[::stride][: cfg.n_questions]
    collate = Collator(tokenizer.pad_token_id)
    device = next(teacher_model.parameters()).device
    feats, labels, qids, temps = [], [], [], []
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)
    for temperature in [GOLD] if gold else cfg.temperatures:
        gen = GenerationConfig(
            do_sample=True,
            temperature=temperature if not gold else 1.0,
            top_k=0,
            max_new_tokens=max_new,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        for start in tqdm(range(0, len(questions), batch_size), desc="PRM samples", leave=False):
            chunk = questions[start : start + batch_size]
            batch = move_batch(collate(chunk), device)
            for _ in range(1 if gold else cfg.samples_per_question):
                if gold:
                    out = _gold_as_generated(chunk, batch["prompt_ids"], tokenizer.pad_token_id)
                else:
                    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
                    out = teacher_model.generate(
                        input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"], generation_config=gen
                    )
                packed = pack_samples(
                    batch["prompt_ids"], batch["prompt_mask"], out, batch["examples"], tokenizer, sep_id, answer_id
                )
                packed = SampledBatch(*(t.to(device) for t in asdict(packed).values()))
                x = step_features(teacher_model, packed)
                m = packed.step_mask
                feats.append(x[m].cpu())
                labels.append(packed.correct[m].cpu())
                q = torch.arange(start, start + len(chunk))[:, None].expand_as(m.cpu())
                qids.append(q[m.cpu()])
                temps.append(torch.full((int(m.sum()),), temperature))
    return torch.cat(feats), torch.cat(labels).float(), torch.cat(qids), torch.cat(temps)


def _gold_as_generated(chunk, prompt_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, P + N): left-padded prompts followed by the gold completions, as ``generate`` returns them."""
    completions = [x.input_ids[x.prompt_len :] for x in chunk]
    N = max(len(c) for c in completions)
    tail = torch.full((len(chunk), N), pad_id, dtype=torch.long)
    for b, c in enumerate(completions):
        tail[b, : len(c)] = torch.tensor(c)
    return torch.cat([prompt_ids, tail.to(prompt_ids.device)], dim=1)


def train_prm(teacher_model, encoded, tokenizer, fmt, cfg: PRMConfig, batch_size: int, max_new: int):
    """Sample, label, fit the scorer; return it with its held-out report."""
    t0 = time.time()
    x, y, qid, temp = sample_teacher_steps(teacher_model, encoded, tokenizer, fmt, cfg, batch_size, max_new)
    gold_added = cfg.include_gold is True or (cfg.include_gold == "auto" and not y.any())
    if gold_added:
        if cfg.include_gold == "auto":
            log.warning("the teacher sampled no correct step: the PRM also scores the gold traces (include_gold=auto)")
        parts = sample_teacher_steps(teacher_model, encoded, tokenizer, fmt, cfg, batch_size, max_new, gold=True)
        x, y, qid, temp = (torch.cat([a, b]) for a, b in zip((x, y, qid, temp), parts, strict=True))
    g = torch.Generator().manual_seed(cfg.seed)
    n_q = int(qid.max()) + 1
    heldout_q = torch.randperm(n_q, generator=g)[: max(1, round(cfg.heldout_fraction * n_q))]
    held = torch.isin(qid, heldout_q)  # split by question: no question's steps on both sides
    xtr, ytr = x[~held], y[~held]
    if ytr.min() == ytr.max():
        raise ValueError(
            "every teacher-sampled step is " + ("correct" if ytr[0] else "wrong") + ": the PRM has nothing to "
            "learn; widen method.prm.temperatures"
        )
    prm = fit_scorer(ProcessRewardModel(x.size(-1), cfg.hidden), xtr, ytr, cfg.epochs, cfg.lr, cfg.seed)
    with torch.no_grad():
        p = torch.sigmoid(prm(x[held]))
    yh = y[held]
    report = PRMReport(
        n_train_steps=int((~held).sum()),
        n_heldout_steps=int(held.sum()),
        positive_rate=float(y.mean()),
        heldout_accuracy=float(((p >= 0.5).float() == yh).float().mean()),
        heldout_auroc=float(binary_auroc(p, yh.long())) if yh.min() != yh.max() else float("nan"),
        positive_rate_by_temperature={str(t): float(y[temp == t].mean()) for t in cfg.temperatures},
        gold_added=gold_added,
        train_seconds=round(time.time() - t0, 1),
    )
    return prm, report


def load_or_train_prm(
    teacher_model, encoded, tokenizer, fmt, cfg: PRMConfig, cache_dir: str | Path, key_parts: dict, **kwargs
) -> tuple[ProcessRewardModel, dict]:
    """The PRM from ``cache_dir/prms/<key>``, trained there (atomically) on a miss."""

    def build(tmp: Path) -> dict:
        prm, report = train_prm(teacher_model, encoded, tokenizer, fmt, cfg, **kwargs)
        save_file({k: v.contiguous() for k, v in prm.state_dict().items()}, str(tmp / "prm.safetensors"))
        return {"n_features": prm.mean.numel(), "config": asdict(cfg), "report": asdict(report)}

    parts = {"prm": asdict(cfg), **key_parts}
    path, meta = build_or_load(cache_dir, "prms", PRM_CACHE_VERSION, parts, "prm.json", build, "PRM")
    key = meta["key"]
    prm = ProcessRewardModel(meta["n_features"], cfg.hidden)
    prm.load_state_dict(load_file(str(path / "prm.safetensors")))
    prm.eval()
    log.info(
        "PRM %s: held-out accuracy %.3f, AUROC %.3f",
        key,
        meta["report"]["heldout_accuracy"],
        meta["report"]["heldout_auroc"],
    )
    return prm, {"source": str(path), **meta}
