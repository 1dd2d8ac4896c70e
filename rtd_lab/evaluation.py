"""Greedy generation and scoring against the gold chain.

A step is correct when its value equals the gold step's value at the same index (or, for a
benchmark with several valid orders, when its ``step_marks`` say it is a valid next step); a chain
is correct when it has exactly the gold number of steps, every one correct, and the right final
answer. Model output is parsed by the benchmark's parser (regular expressions, never ``eval``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from rtd_lab.data.batch import move_batch
from rtd_lab.data.example import ReasoningExample
from rtd_lab.metrics import ReasoningAccuracy
from rtd_lab.models.decode import decode


@dataclass
class Scored:
    uid: str
    depth: int
    chain_correct: bool
    answer_correct: bool
    steps_correct: int
    steps_total: int
    completion: str
    # What a reader of predictions_*.jsonl (or the W&B table) needs beside the completion:
    question: str = ""
    prompt: str = ""
    gold_steps: list[str] = field(default_factory=list)
    gold_answer: str = ""
    step_correct: list[bool] = field(default_factory=list)  # per gold step


def score(example: ReasoningExample, completion: str, parse, prompt: str = "", step_marks=None) -> Scored:
    """``step_marks(example, completion)``: per generated step, is it right (default: its value is
    the gold one at its index)."""
    pred_steps, pred_answer = parse(completion)
    gold = [s.value for s in example.steps]
    if step_marks is None:
        step_ok = [i < len(pred_steps) and pred_steps[i] == g for i, g in enumerate(gold)]
    else:
        marks = step_marks(example, completion)
        step_ok = [i < len(marks) and marks[i] for i in range(len(gold))]
    answer_ok = pred_answer is not None and pred_answer == example.answer
    chain_ok = all(step_ok) and len(pred_steps) == len(gold) and answer_ok
    return Scored(
        example.uid,
        example.depth,
        chain_ok,
        answer_ok,
        sum(step_ok),
        len(gold),
        completion,
        question=example.question,
        prompt=prompt,
        gold_steps=[s.text for s in example.steps],
        gold_answer=str(example.answer),
        step_correct=step_ok,
    )


class Evaluator:
    """Generates completions for a batch's prompts and scores them; one code path for teacher and student."""

    def __init__(self, tokenizer, benchmark):
        self.tokenizer = tokenizer
        self.benchmark = benchmark
        self.generation_config = GenerationConfig(
            do_sample=False,
            max_new_tokens=benchmark.max_completion_tokens(),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )

    @torch.no_grad()
    def generate(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[str]:
        was_training = model.training
        model.eval()
        gen = self.generation_config  # greedy; exported with the student (generation_config.json)
        out = decode(model, prompt_ids, prompt_mask, gen.max_new_tokens, gen.eos_token_id, gen.pad_token_id)
        model.train(was_training)
        return self.tokenizer.batch_decode(out[:, prompt_ids.shape[1] :], skip_special_tokens=True)

    def score_batch(self, model, batch: dict) -> list[Scored]:
        texts = self.generate(model, batch["prompt_ids"], batch["prompt_mask"])
        fmt, parse = self.benchmark.format, self.benchmark.parse_completion
        marks = getattr(self.benchmark, "step_marks", None)
        return [
            score(ex, t, parse, prompt=fmt.render(ex, False)[0], step_marks=marks)
            for ex, t in zip(batch["examples"], texts, strict=True)
        ]

    @staticmethod
    def update_metric(metric: ReasoningAccuracy, scored: list[Scored]) -> None:
        metric.update(
            depth=torch.tensor([s.depth for s in scored]),
            chain_correct=torch.tensor([s.chain_correct for s in scored]),
            answer_correct=torch.tensor([s.answer_correct for s in scored]),
            steps_correct=torch.tensor([s.steps_correct for s in scored]),
            steps_total=torch.tensor([s.steps_total for s in scored]),
        )

    def evaluate(self, model, dataloader, desc: str = "eval") -> tuple[dict[str, float], list[dict]]:
        """Run a model over a whole loader: (metrics, one record per example)."""
        metric = ReasoningAccuracy(self.benchmark.depths)
        device = next(model.parameters()).device
        records: list[dict] = []
        for batch in tqdm(dataloader, desc=desc, leave=False):
            scored = self.score_batch(model, move_batch(batch, device))
            self.update_metric(metric, scored)
            records.extend(asdict(s) for s in scored)
        return {k: float(v) for k, v in metric.compute().items()}, records
