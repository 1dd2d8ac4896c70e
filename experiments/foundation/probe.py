"""Calibration probe: how fast does a model of a given size learn each part of a synthetic step?

Trains a Llama from scratch with plain CE on the synthetic benchmark (a bare PyTorch loop, one-cycle
schedule, torch seed 0) and prints, every 300 steps, teacher-forced accuracy on the test split for
each token role of a trace step ``prev op operand = result ;``:

    0 prev value (copied from the step before)   1 operator (copied from the definition)
    2 operand (copied)   3 "="   4 result (the arithmetic)   5 ";" or "####" (when to stop)
    6 the answer after "####"   7 <eos>

    python experiments/foundation/probe.py WIDTH LAYERS STEPS LR MODULUS MAX_DEPTH [RULE]
    e.g. python experiments/foundation/probe.py 64 2 1200 3e-3 11 6

Set NT=1 to run two probes side by side on 2 cores.
"""

import os
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rtd_lab.data.datamodule import ReasoningDataModule
from rtd_lab.data.synthetic import SyntheticBenchmark

torch.set_num_threads(int(os.environ.get("NT", "2")))
torch.manual_seed(0)
width, layers, steps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
lr, modulus, max_depth = float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
rule = sys.argv[7] if len(sys.argv) > 7 else "arithmetic"

bm = SyntheticBenchmark(modulus=modulus, max_depth=max_depth, rule=rule)
tok = bm.build_tokenizer()
dm = ReasoningDataModule.gold(bm, tok, 64, 300)
heads = max(1, width // 32)
model = LlamaForCausalLM(
    LlamaConfig(
        vocab_size=len(tok),
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
)
opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=0.01)
sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)
semi = tok.convert_tokens_to_ids(";")


def roles(targets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Role of every supervised target token: its index within its step (capped at 7)."""
    r = torch.full_like(targets, -1)
    for b in range(targets.shape[0]):
        k = 0
        for t in (labels[b] != -100).nonzero().flatten().tolist():
            r[b, t] = min(k, 7)
            k = 0 if targets[b, t] == semi else k + 1
    return r


@torch.no_grad()
def probe() -> dict[int, float]:
    model.eval()
    hits: dict[int, list[int]] = {}
    for b in dm.test_dataloader():
        pred = model(input_ids=b["input_ids"]).logits[:, :-1].argmax(-1)
        target, labels = b["input_ids"][:, 1:], b["labels"][:, 1:]
        r = roles(target, labels)
        for role in range(8):
            sel = r == role
            if sel.any():
                h = hits.setdefault(role, [0, 0])
                h[0] += (pred[sel] == target[sel]).sum().item()
                h[1] += sel.sum().item()
    model.train()
    return {k: round(v[0] / v[1], 3) for k, v in sorted(hits.items())}


start, it = time.time(), iter(dm.train_dataloader())
for step in range(steps):
    try:
        batch = next(it)
    except StopIteration:
        it = iter(dm.train_dataloader())
        batch = next(it)
    loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    sched.step()
    if step % 300 == 0 or step == steps - 1:
        print(step, round(loss.item(), 4), f"{time.time() - start:.0f}s", probe(), flush=True)
