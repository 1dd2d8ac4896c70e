"""Post-training weight quantisation of a student on CPU (the RTD paper's 4-bit robustness claim).

Weight-only, asymmetric, group-wise quantisation by HQQ (Half-Quadratic Quantization, Badri & Shaji
2023; ``pip install hqq``): every ``nn.Linear`` of the transformer blocks gets its weights rounded to
``bits``-bit integers in groups of ``group_size`` consecutive values, each group with its own float32
scale and zero point that HQQ fits by minimising the rounding error (no calibration data); the
layer stores the integers packed (two 4-bit values per byte) and dequantises on the fly, so the
model runs on a CPU with float32 activations. Storage per parameter of a quantised layer is
``bits + 64 / group_size`` bits: 4.5 at 4 bits and the default group of 128 (the budget of
bitsandbytes' NF4 without double quantisation), 8.5 at 8 bits. A layer whose size the group does
not divide gets the largest group that does (``group_for``; more bits per parameter, reported).

Why HQQ (tried on the default student, 1 layer of width 48, torch 2.13 CPU): torchao 0.18 quantises
weights to int4 on this CPU only unpacked into int8 (``IntxWeightOnlyConfig``: 8 bits a value), and
refused its CPU packing (``int4_packing_format="opaque"``: unsupported); optimum-quanto 0.2.7 packs
int4 but groups within a row, so at width 48 each 48 values carry a float32 scale and shift (5.3
bits); HQQ 0.2.8 groups over the flattened weight, so any layer whose size the group divides
qualifies (4.5 bits), and it is maintained and integrated in transformers. The output layer
(here tied to the embeddings) stays in float32, as in bitsandbytes' and HQQ's own model
quantisation (listed in ``kept_float``).
"""

from __future__ import annotations

import torch
from torch import nn

BITS = (8, 4)


def quantize_weights(model: nn.Module, bits: int, group_size: int = 128) -> dict:
    """Quantise ``model`` in place (pass a copy; it must be float32 on the CPU) and say what was done:
    ``{"scheme", "bits_per_parameter", "quantized_layers", "smaller_groups", "kept_float"}``.

    ``bits_per_parameter`` is measured from the stored tensors of the quantised layers (packed
    integers + scales + zero points) divided by their number of weights.
    """
    if bits not in BITS:
        raise ValueError(f"diagnostics.quantize: bits must be one of {list(BITS)}, got {bits}")
    try:
        from hqq.core.quantize import BaseQuantizeConfig, HQQLinear
    except ImportError as err:  # a core dependency; only a broken environment gets here
        raise ImportError("post-training quantisation needs hqq: pip install hqq") from err

    q = model.eval()
    tied = {id(m) for m in (q.get_output_embeddings(), q.get_input_embeddings()) if m is not None}
    quantized, kept, smaller, stored_bits, weights = [], [], {}, 0, 0
    for name, parent in list(q.named_modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or id(child) in tied:
                continue
            full = f"{name}.{child_name}" if name else child_name
            n = child.weight.numel()
            group = group_for(n, group_size, bits)
            if group is None:
                kept.append(full)
                continue
            if group != group_size:
                smaller[full] = group
            config = BaseQuantizeConfig(nbits=bits, group_size=group, axis=1)
            layer = HQQLinear(child, quant_config=config, compute_dtype=torch.float32, device="cpu", del_orig=True)
            setattr(parent, child_name, layer)
            stored = [layer.W_q, layer.meta["scale"], layer.meta["zero"]]
            stored_bits += sum(t.numel() * t.element_size() * 8 for t in stored)
            weights += n
            quantized.append(full)
    kept += [n for n, m in q.named_modules() if isinstance(m, nn.Linear | nn.Embedding) and id(m) in tied]
    return {
        "scheme": f"int{bits} weights, groups of {group_size}, HQQ (CPU, float32 activations)",
        "bits_per_parameter": stored_bits / weights if weights else None,
        "quantized_layers": quantized,
        "smaller_groups": smaller,
        "kept_float": sorted(set(kept)),
    }


def group_for(numel: int, group_size: int, bits: int) -> int | None:
    """The largest group of at most ``group_size`` values that divides a weight of ``numel`` values
    (4-bit: into an even number of groups, which HQQ packs in pairs); None if there is none.
    Narrow layers (a test's tiny student) get smaller groups, and so more bits per parameter."""
    for group in range(min(group_size, numel), 0, -1):
        if numel % group == 0 and (bits != 4 or (numel // group) % 2 == 0):
            return group
    return None
