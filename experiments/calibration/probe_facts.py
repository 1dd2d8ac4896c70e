"""Calibration probe: train a Llama on a fact corpus of the table rule ("x @ n = y ; x @ n = y ; ..."),
and print, every --eval_every steps, the share of all facts it recalls (each fact once, at a random
slot of a sequence of random facts). How the student's fact capacity was measured
(experiments/calibration/README.md, "Can the student's capacity be the limit here?").

    python experiments/calibration/probe_facts.py --width 48 --ff 24 --modulus 97 --K 8 --ops @ \
        --supervise y --min_seq 1 --steps 3000
"""

import argparse
import json
import random
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rtd_lab.data.synthetic import SyntheticBenchmark, apply_op

p = argparse.ArgumentParser()
p.add_argument("--width", type=int, default=48)
p.add_argument("--layers", type=int, default=1)
p.add_argument("--ff", type=int, default=0)
p.add_argument("--heads", type=int, default=2)
p.add_argument("--steps", type=int, default=2000)
p.add_argument("--lr", type=float, default=3e-3)
p.add_argument("--warmup", type=int, default=100)
p.add_argument("--decay", type=float, default=0.2)
p.add_argument("--modulus", type=int, default=23)
p.add_argument("--ops", default="@")
p.add_argument("--per_seq", type=int, default=10)
p.add_argument("--min_seq", type=int, default=0)
p.add_argument("--bs", type=int, default=64)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--save", default=None)
p.add_argument("--eval_every", type=int, default=250)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--supervise", default="all")
p.add_argument("--K", type=int, default=0)
p.add_argument("--tag", default="")
a = p.parse_args()
torch.set_num_threads(a.threads)
ops = a.ops.split(",")
bm = SyntheticBenchmark(modulus=a.modulus, rule="table", ops=tuple(ops))
tok = bm.build_tokenizer()
m = a.modulus
facts = [(x, op, n) for op in ops for n in range(a.K or m) for x in range(m)]
vid = {w: i for w, i in tok.get_vocab().items()}


def fact_ids(x, op, n):
    return [vid[str(x)], vid[op], vid[str(n)], vid["="], vid[str(apply_op(x, op, n, m, 0))]]


sep = vid[";"]
rng = random.Random(a.seed)
torch.manual_seed(a.seed)
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
opt = torch.optim.AdamW(model.parameters(), a.lr, weight_decay=0.01)
d0 = int(a.steps * (1 - a.decay))


def f(s):
    return (s + 1) / a.warmup if s < a.warmup else (1.0 if s < d0 else max(0.0, 1 - (s - d0) / max(a.steps - d0, 1)))


sched = torch.optim.lr_scheduler.LambdaLR(opt, f)


def batch(bs):
    ids, labels = [], []
    mn = a.min_seq or a.per_seq
    for _ in range(bs):
        seq, lab = [tok.bos_token_id], [-100]
        for j in range(rng.randint(mn, a.per_seq)):
            fi = fact_ids(*rng.choice(facts))
            if j:
                seq.append(sep)
                lab.append(sep)
            seq += fi
            lab += fi if a.supervise == "all" else [-100, -100, -100, -100, fi[-1]]
        ids.append(seq)
        labels.append(lab)
    L = max(map(len, ids))
    ids = [x + [tok.pad_token_id] * (L - len(x)) for x in ids]
    labels = [x + [-100] * (L - len(x)) for x in labels]
    return torch.tensor(ids), torch.tensor(labels)


@torch.no_grad()
def fact_acc():
    model.eval()
    # every fact once, at a random slot of a sequence of random facts
    er = random.Random(123)
    correct = 0
    chunks = [facts[i : i + 256] for i in range(0, len(facts), 256)]
    for ch in chunks:
        ids, pos = [], []
        for fct in ch:
            k = er.randrange(a.per_seq)
            seq = [tok.bos_token_id]
            for j in range(a.per_seq):
                fi = fact_ids(*(fct if j == k else er.choice(facts)))
                if j:
                    seq.append(sep)
                seq += fi
                if j == k:
                    pos.append(len(seq) - 2)
            ids.append(seq)
        logits = model(input_ids=torch.tensor(ids)).logits
        pred = logits[torch.arange(len(ch)), torch.tensor(pos)].argmax(-1)
        gold = torch.tensor([vid[str(apply_op(x, op, n, m, 0))] for x, op, n in ch])
        correct += (pred == gold).sum().item()
    model.train()
    return correct / len(facts)


t0 = time.time()
curve = []
for s in range(a.steps):
    ids, labels = batch(a.bs)
    logits = model(input_ids=ids).logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1))
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    if (s + 1) % a.eval_every == 0 or s + 1 == a.steps:
        row = {
            "step": s + 1,
            "loss": round(loss.item(), 3),
            "fact_acc": round(fact_acc(), 3),
            "t": round(time.time() - t0),
        }
        curve.append(row)
        print(json.dumps(row), flush=True)
print(
    "RESULT",
    json.dumps(
        {
            "tag": a.tag,
            "args": vars(a),
            "facts": len(facts),
            "params": sum(p.numel() for p in model.parameters()),
            "curve": curve,
        }
    ),
)
if a.save:
    model.save_pretrained(a.save)
    tok.save_pretrained(a.save)
