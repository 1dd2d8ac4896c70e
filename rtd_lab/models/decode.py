"""Sampling and greedy decoding for small Llama models without ``generate``'s per-token overhead.

On the synthetic benchmark the student is a 1-layer Llama of width 48: one decoding step is a few
dozen tiny matrix products, and ``transformers``' ``generate`` adds Python around each of them
(module wrappers, cache objects, mask building, logits processors). step_reward draws a trace for
every question of every training step (decoding is about a third of its step), the evaluator and
SAMPLE decode too. ``decode`` runs the same computation — the model's own weights, its own rotary
embedding and RMSNorm modules, float32 softmax over ``logits / temperature`` and
``torch.multinomial`` as ``generate`` samples — over a preallocated key/value cache, and skips the
rest; what that saves per call: ``benchmarks/decoding.py``.

Same contract as ``model.generate(input_ids, attention_mask, do_sample, temperature, top_k=0,
max_new_tokens, pad_token_id, eos_token_id)``: left-padded prompts (B, P) in, (B, P + N) out, rows
that emitted ``eos`` continue with ``pad``, decoding stops when every row has finished or after
``max_new_tokens``. Any model that is not a plain Llama (another architecture, rope scaling,
sliding windows, a non-SiLU MLP) goes to ``generate`` instead, so callers never need to know.
Tested against ``generate``: the same greedy tokens, and the same samples from the same random
state, with left padding, grouped-query attention and rows that stop early (tests/test_decode.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, LlamaForCausalLM


def supports_fast_decode(model) -> bool:
    """True when ``decode`` reproduces the model's own forward pass (a plain Llama)."""
    if type(model) is not LlamaForCausalLM:  # not a subclass, a PEFT wrapper, a compiled or FSDP2 module
        return False
    weight = model.model.embed_tokens.weight
    if hasattr(weight, "ds_id") or type(weight).__name__ == "DTensor":
        return False  # sharded (DeepSpeed ZeRO-3, FSDP): only the model's own forward gathers the weights
    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    return (
        rope_type == "default"
        and cfg.hidden_act == "silu"
        and getattr(cfg, "pretraining_tp", 1) == 1
        and not getattr(model, "is_quantized", False)
        and not getattr(cfg, "attention_dropout", 0.0)
    )


@torch.no_grad()
def decode(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    do_sample: bool = False,
    temperature: float = 1.0,
) -> torch.Tensor:
    """(B, P) left-padded prompts → (B, P + N) prompts and completions, as ``generate`` returns them."""
    if not supports_fast_decode(model):
        gen = GenerationConfig(
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_k=0 if do_sample else None,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
        )
        return model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=gen)
    return LlamaDecoder(model).run(
        prompt_ids, prompt_mask, max_new_tokens, eos_token_id, pad_token_id, do_sample, temperature
    )


class LlamaDecoder:
    """Llama's forward pass (``transformers.models.llama.modeling_llama``) for decoding with a
    preallocated cache: prefill the prompt, then one position per step."""

    def __init__(self, model):
        self.lm = model
        self.body = model.model
        cfg = model.config
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scaling = self.head_dim**-0.5

    def layer(self, i, h, cos, sin, keys, values, at: slice, mask: torch.Tensor) -> torch.Tensor:
        """One decoder layer over the new positions ``at``; keys / values (B, H_kv, P + N, d) are
        filled at ``at`` and read up to its end; mask (B, 1, T_new, T_seen) additive."""
        block = self.body.layers[i]
        attn = block.self_attn
        B, T, _ = h.shape
        x = block.input_layernorm(h)
        q = attn.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        keys[:, :, at], values[:, :, at] = k, v
        k_all, v_all = keys[:, :, : at.stop], values[:, :, : at.stop]
        if self.n_kv != self.n_heads:
            rep = self.n_heads // self.n_kv
            k_all, v_all = k_all.repeat_interleave(rep, 1), v_all.repeat_interleave(rep, 1)
        scores = torch.matmul(q, k_all.transpose(2, 3)) * self.scaling + mask
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, v_all).transpose(1, 2).reshape(B, T, -1)
        h = h + attn.o_proj(out)
        mlp, x = block.mlp, block.post_attention_layernorm(h)
        return h + mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))

    def forward(self, ids, positions, caches, at: slice, mask) -> torch.Tensor:
        """Logits of the last new position: (B, V)."""
        h = self.body.embed_tokens(ids)
        cos, sin = self.body.rotary_emb(h, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        for i, (keys, values) in enumerate(caches):
            h = self.layer(i, h, cos, sin, keys, values, at, mask)
        return self.lm.lm_head(self.body.norm(h[:, -1]))

    def run(self, prompt_ids, prompt_mask, max_new_tokens, eos_id, pad_id, do_sample, temperature):
        B, P = prompt_ids.shape
        total = P + max_new_tokens
        dtype, device = self.body.embed_tokens.weight.dtype, prompt_ids.device
        caches = [
            (
                torch.zeros(B, self.n_kv, total, self.head_dim, dtype=dtype, device=device),
                torch.zeros(B, self.n_kv, total, self.head_dim, dtype=dtype, device=device),
            )
            for _ in self.body.layers
        ]
        seen = torch.zeros(B, total, dtype=torch.bool, device=device)
        seen[:, :P] = prompt_mask.bool()
        # generate's positions for left padding: count real tokens, padding at position 1
        positions = (prompt_mask.long().cumsum(-1) - 1).masked_fill(prompt_mask == 0, 1)
        next_pos = positions[:, -1:] + 1
        neg = torch.finfo(dtype).min
        causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
        mask = torch.where(causal[None, None] & seen[:, None, None, :P], 0.0, neg).to(dtype)
        logits = self.forward(prompt_ids, positions, caches, slice(0, P), mask)
        out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
        running = torch.ones(B, dtype=torch.bool, device=device)
        for t in range(max_new_tokens):
            scores = logits.float()
            if do_sample:
                if temperature != 1.0:
                    scores = scores / temperature
                token = torch.multinomial(F.softmax(scores, dim=-1), num_samples=1).squeeze(1)
            else:
                token = scores.argmax(-1)
            token = torch.where(running, token, torch.full_like(token, pad_id))
            out[:, t] = token
            running &= token != eos_id
            if not running.any() or t == max_new_tokens - 1:
                return torch.cat([prompt_ids, out[:, : t + 1]], dim=1)
            at = slice(P + t, P + t + 1)
            seen[:, at] = True
            mask = torch.where(seen[:, None, None, : at.stop], 0.0, neg).to(dtype)
            logits = self.forward(token[:, None], next_pos, caches, at, mask)
            next_pos = next_pos + 1
        return prompt_ids


def split_generated(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, generated: torch.Tensor, eos_id: int):
    """``generate`` / ``decode`` output (B, P + N) for left-padded prompts (B, P) → one (prompt tokens,
    completion tokens through the first <eos>) pair of lists per row; a completion cut off at the token
    limit has no <eos>."""
    P = prompt_ids.size(1)
    rows = []
    for b in range(generated.size(0)):
        completion = generated[b, P:].tolist()
        if eos_id in completion:
            completion = completion[: completion.index(eos_id) + 1]
        rows.append((prompt_ids[b][prompt_mask[b].bool()].tolist(), completion))
    return rows


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
