"""Calibration probe: a bare PyTorch loop that trains a Llama with plain CE on the synthetic benchmark's
gold traces, optionally from a saved checkpoint, and prints greedy validation accuracy every
--eval_every steps (chain accuracy, step accuracy, depth 1, deepest depth), then the test metrics.

How the candidate designs of experiments/calibration/README.md were screened before they were
measured with the framework itself. One thread by default, so two probes run side by side on 2 cores.

    python experiments/calibration/probe_traces.py --width 48 --ff 16 --layers 1 --steps 3000 \
        --modulus 97 --K 8 --ops @ --dseed 1 --save /tmp/base      # a student base on a sibling world
    python experiments/calibration/probe_traces.py --init /tmp/base --steps 3000 --modulus 97 --K 8 --ops @
"""

import argparse
import json
import math
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rtd_lab.data.batch import Collator
from rtd_lab.data.datamodule import ReasoningDataModule
from rtd_lab.data.synthetic import SyntheticBenchmark
from rtd_lab.evaluation import Evaluator

p = argparse.ArgumentParser()
p.add_argument("--width", type=int, default=64)
p.add_argument("--layers", type=int, default=2)
p.add_argument("--ff", type=int, default=0)
p.add_argument("--heads", type=int, default=2)
p.add_argument("--steps", type=int, default=1500)
p.add_argument("--lr", type=float, default=3e-3)
p.add_argument("--sched", default="wsd")
p.add_argument("--warmup", type=int, default=100)
p.add_argument("--decay", type=float, default=0.2)
p.add_argument("--modulus", type=int, default=11)
p.add_argument("--ops", default=None)
p.add_argument("--rule", default="table")
p.add_argument("--max_depth", type=int, default=6)
p.add_argument("--train_max_depth", type=int, default=0)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--order", type=int, default=0)
p.add_argument("--init", default=None)
p.add_argument("--save", default=None)
p.add_argument("--eval_every", type=int, default=500)
p.add_argument("--ntrain", type=int, default=3000)
p.add_argument("--bs", type=int, default=64)
p.add_argument("--wd", type=float, default=0.01)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--K", type=int, default=0)
p.add_argument("--dseed", type=int, default=0)
p.add_argument("--mark_asked", action="store_true")  # as data.mark_asked (the default benchmark)
p.add_argument("--tag", default="")
a = p.parse_args()
torch.set_num_threads(a.threads)
kw = dict(modulus=a.modulus, max_depth=a.max_depth, rule=a.rule, n_train_per_depth=a.ntrain)
if a.ops:
    kw["ops"] = tuple(a.ops.split(","))
if a.K:
    kw["n_operands"] = a.K
kw["seed"] = a.dseed
kw["mark_asked"] = a.mark_asked
bm = SyntheticBenchmark(**kw)
tok = bm.build_tokenizer()
dm = ReasoningDataModule.gold(bm, tok, a.bs, 300)
train = dm.encoded["train"]
if a.train_max_depth:
    train = [x for x in train if x.example.depth <= a.train_max_depth]
col = Collator(tok.pad_token_id)
torch.manual_seed(a.seed)
if a.init:
    model = LlamaForCausalLM.from_pretrained(a.init)
else:
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=a.width,
            intermediate_size=a.ff or 4 * a.width,
            num_hidden_layers=a.layers,
            num_attention_heads=a.heads,
            num_key_value_heads=a.heads,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    )
nparams = sum(p.numel() for p in model.parameters())
opt = torch.optim.AdamW(model.parameters(), a.lr, weight_decay=a.wd)


def lr_factor(s):
    if s < a.warmup:
        return (s + 1) / a.warmup
    if a.sched == "const":
        return 1.0
    if a.sched == "cosine":
        pr = (s - a.warmup) / max(a.steps - a.warmup, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * pr))
    # wsd: stable, then linear decay to 0 over the last `decay` fraction
    d0 = int(a.steps * (1 - a.decay))
    if s < d0:
        return 1.0
    return max(0.0, 1 - (s - d0) / max(a.steps - d0, 1))


sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
ev = Evaluator(tok, bm)


def evaluate(split="test"):
    loader = torch.utils.data.DataLoader(dm.encoded[split], batch_size=300, collate_fn=col)
    m, _ = ev.evaluate(model, loader, "eval")
    return m


gen = torch.Generator().manual_seed(a.order)
order = torch.randperm(len(train), generator=gen).tolist()
pos = 0
epoch = 0
t0 = time.time()
curve = []
model.train()
for step in range(a.steps):
    if pos + a.bs > len(order):
        epoch += 1
        order = torch.randperm(len(train), generator=gen).tolist()
        pos = 0
    batch = col([train[i] for i in order[pos : pos + a.bs]])
    pos += a.bs
    out = model(input_ids=batch["input_ids"], use_cache=False)
    logits = out.logits[:, :-1]
    labels = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
        m = evaluate("val")
        row = {
            "step": step + 1,
            "loss": round(loss.item(), 4),
            "val_chain": round(m["chain_acc"], 3),
            "val_step": round(m["step_acc"], 3),
            "d1": round(m["chain_acc/depth_1"], 3),
            "dmax": round(m[f"chain_acc/depth_{a.max_depth}"], 3),
            "t": round(time.time() - t0),
        }
        curve.append(row)
        print(json.dumps(row), flush=True)
        model.train()
m = evaluate("test")
res = {
    "tag": a.tag,
    "args": vars(a),
    "params": nparams,
    "train_s": round(time.time() - t0),
    "test": {k: round(v, 3) for k, v in m.items() if k.startswith("chain_acc") or k in ("step_acc", "answer_acc")},
    "curve": curve,
}
print("RESULT", json.dumps(res), flush=True)
if a.save:
    model.save_pretrained(a.save)
    tok.save_pretrained(a.save)
