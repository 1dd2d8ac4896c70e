"""Post-training weight quantisation (rtd_lab/quantize.py): really 4 / 8 bits, outputs change, layers listed."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rtd_lab.quantize import group_for, quantize_weights


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=139, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize(("bits", "budget"), [(4, 4.5), (8, 8.5)])
def test_quantised_weights_take_their_bits_and_change_the_outputs(model, bits, budget):
    q = copy.deepcopy(model)
    info = quantize_weights(q, bits)
    assert len(info["quantized_layers"]) == 2 * 7 and info["smaller_groups"] == {}  # q k v o gate up down
    assert info["kept_float"] == ["lm_head", "model.embed_tokens"]  # the tied output matrix
    # Measured from what the layers store: packed integers, a float32 scale and zero per 128 weights.
    assert info["bits_per_parameter"] <= budget
    layer = q.model.layers[0].self_attn.q_proj
    assert layer.W_q.dtype == torch.uint8 and layer.W_q.numel() == 64 * 64 * bits // 8
    assert not any(isinstance(m, torch.nn.Linear) for n, m in q.model.layers.named_modules())
    x = torch.randint(0, 139, (2, 12))
    with torch.no_grad():
        ref, out = model(x).logits, q(x).logits
    assert not torch.allclose(out, ref)  # really quantised
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.9  # and still the model


def test_eight_bits_lose_less_than_four(model):
    x = torch.randint(0, 139, (2, 12))
    errors = {}
    for bits in (8, 4):
        q = copy.deepcopy(model)
        quantize_weights(q, bits)
        with torch.no_grad():
            errors[bits] = (q(x).logits - model(x).logits).abs().mean().item()
    assert 0 < errors[8] < errors[4]


def test_narrow_layers_get_smaller_groups_and_bad_widths_are_refused():
    assert group_for(64 * 48, 128, 4) == 128 and group_for(48 * 48, 128, 4) == 128
    assert group_for(8 * 8, 128, 4) == 32  # 2 groups: HQQ packs 4-bit groups in pairs
    assert group_for(8 * 8, 128, 8) == 64
    assert group_for(7, 128, 4) is None  # no even split: the layer stays float32
    with pytest.raises(ValueError, match="diagnostics.quantize"):
        quantize_weights(torch.nn.Linear(4, 4), 3)
