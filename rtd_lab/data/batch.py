"""Tokenisation with step boundaries, and the batch every method shares (a small module of its own:
evaluation, sampling, the PRM, the curriculum and the offline cache all batch examples this way).

A batch (B examples, T tokens, K = most steps in the batch, P = longest prompt):

    input_ids       (B, T)  <bos> question : trace #### answer <eos>, right-padded
    attention_mask  (B, T)
    labels          (B, T)  = input_ids on trace/answer/eos tokens, -100 on prompt and padding
                            (Hugging Face convention: not shifted; logits[:, t] predicts labels[:, t+1])
    boundary_pos    (B, K)  token index where step i concludes (its value token); 0 where padded
    boundary_mask   (B, K)  True for real boundaries of that example's chain
    depth           (B,)
    prompt_ids      (B, P)  the prompt alone, left-padded, for generation
    prompt_mask     (B, P)
    split           "train" | "val" | "test" | None: the split the rows index
    row             (B,)    each example's index in its split (the offline teacher cache is read by it)
    examples        list of the B ReasoningExample objects (gold steps for scoring)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rtd_lab.data.example import ReasoningExample, TraceFormat


@dataclass(frozen=True)
class Encoded:
    example: ReasoningExample
    input_ids: list[int]
    labels: list[int]
    boundary_pos: list[int]
    prompt_len: int
    row: int = -1  # index in its split (the offline teacher cache is keyed by it)


def encode_example(
    ex: ReasoningExample, tokenizer, fmt: TraceFormat, with_trace: bool = True, segmenter=None
) -> Encoded:
    """Tokenise one example and find the token at which each step concludes.

    Works with any fast tokenizer: boundaries come from the offset mapping, not from our vocabulary.
    ``with_trace=False`` supervises the answer alone (no steps, so no boundaries). ``segmenter``
    (completion text → character offsets of step ends) replaces the example's own steps as the
    source of boundaries (``rtd_lab.traces.segment``).
    """
    prompt, completion, step_ends = fmt.render(ex, with_trace)
    if segmenter is not None and with_trace:
        step_ends = [len(prompt) + end for end in segmenter(completion)]
    enc = tokenizer(prompt + completion, add_special_tokens=True)
    ids = list(enc["input_ids"])
    offsets = enc.encodings[0].offsets
    special = enc.encodings[0].special_tokens_mask
    n_prompt = sum(1 for (start, end), sp in zip(offsets, special, strict=True) if sp or end <= len(prompt))
    boundary = []
    for char in step_ends:
        tok = enc.char_to_token(char)
        if tok is None:
            raise ValueError(f"{ex.uid}: no token covers the end of a step (char {char}) with this tokenizer")
        boundary.append(tok)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token: generation could not stop")
    ids.append(tokenizer.eos_token_id)
    labels = [-100] * n_prompt + ids[n_prompt:]
    return Encoded(ex, ids, labels, boundary, n_prompt)


def move_batch(batch: dict, device: torch.device) -> dict:
    """Tensors move; the gold ReasoningExample objects ride along untouched."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


class Collator:
    """Pads a list of ``Encoded`` into the batch above (data only: the teacher's outputs, online or
    from the offline cache by ``split`` and ``row``, are the method's to fetch)."""

    def __init__(self, pad_id: int, split: str | None = None):
        self.pad_id = pad_id
        self.split = split  # the split the items' rows index (None: not a split of the DataModule)

    def __call__(self, items: list[Encoded]) -> dict:
        B = len(items)
        T = max(len(x.input_ids) for x in items)
        K = max(len(x.boundary_pos) for x in items)
        P = max(x.prompt_len for x in items)
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((B, T), dtype=torch.long)
        labels = torch.full((B, T), -100, dtype=torch.long)
        boundary_pos = torch.zeros((B, K), dtype=torch.long)
        boundary_mask = torch.zeros((B, K), dtype=torch.bool)
        prompt_ids = torch.full((B, P), self.pad_id, dtype=torch.long)
        prompt_mask = torch.zeros((B, P), dtype=torch.long)
        for b, x in enumerate(items):
            n, k, p = len(x.input_ids), len(x.boundary_pos), x.prompt_len
            input_ids[b, :n] = torch.tensor(x.input_ids)
            attention_mask[b, :n] = 1
            labels[b, :n] = torch.tensor(x.labels)
            boundary_pos[b, :k] = torch.tensor(x.boundary_pos)
            boundary_mask[b, :k] = True
            prompt_ids[b, P - p :] = torch.tensor(x.input_ids[:p])  # left padding for generation
            prompt_mask[b, P - p :] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "boundary_pos": boundary_pos,
            "boundary_mask": boundary_mask,
            "depth": torch.tensor([x.example.depth for x in items]),
            "split": self.split,
            "row": torch.tensor([x.row for x in items]),
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "examples": [x.example for x in items],
        }
