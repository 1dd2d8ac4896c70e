"""rtd_lab.models.decode: the lean decoding loop gives what ``generate`` gives."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from rtd_lab.models.decode import decode, supports_fast_decode

VOCAB, PAD, EOS = 40, 0, 2


def tiny_llama(kv_heads: int = 2, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=128,
        pad_token_id=PAD,
        eos_token_id=EOS,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # make <eos> likely enough that rows finish at different lengths
        model.lm_head.weight[EOS] = model.model.norm.weight.sign() * 0.6
    return model


def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts of three lengths, as the datamodule batches them."""
    torch.manual_seed(1)
    ids = torch.randint(3, VOCAB, (6, 9))
    mask = torch.ones_like(ids)
    for row, pad in enumerate([0, 0, 3, 5, 1, 0]):
        ids[row, :pad], mask[row, :pad] = PAD, 0
    return ids, mask


def generate(model, ids, mask, do_sample: bool, max_new: int = 20, temperature: float = 1.0):
    gen = GenerationConfig(
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_k=0 if do_sample else None,
        max_new_tokens=max_new,
        pad_token_id=PAD,
        eos_token_id=EOS,
    )
    return model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)


@pytest.mark.parametrize("kv_heads", [4, 2])  # plain and grouped-query attention
def test_greedy_decoding_equals_generate(kv_heads):
    model, (ids, mask) = tiny_llama(kv_heads), prompts()
    assert supports_fast_decode(model)
    expected = generate(model, ids, mask, do_sample=False)
    got = decode(model, ids, mask, 20, EOS, PAD)
    assert torch.equal(got, expected)
    assert (expected[:, ids.size(1) :] == EOS).any()  # the test covers rows that stop early


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sampling_draws_what_generate_draws_from_the_same_random_state(temperature):
    model, (ids, mask) = tiny_llama(), prompts()
    torch.manual_seed(5)
    expected = generate(model, ids, mask, do_sample=True, temperature=temperature)
    torch.manual_seed(5)
    got = decode(model, ids, mask, 20, EOS, PAD, do_sample=True, temperature=temperature)
    assert torch.equal(got, expected)
    finished = (expected[:, ids.size(1) :] == EOS).cumsum(1) > 0
    after_eos = finished & (expected[:, ids.size(1) :] != EOS)
    assert after_eos.any() and (expected[:, ids.size(1) :][after_eos] == PAD).all()  # padded after <eos>


def test_decoding_stops_when_every_row_has_finished():
    model, (ids, mask) = tiny_llama(), prompts()
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: greedy picks token 0, here the end of sequence
    out = decode(model, ids, mask, 20, eos_token_id=0, pad_token_id=1)
    assert out.shape == (6, ids.size(1) + 1) and (out[:, -1] == 0).all()


def test_other_models_go_to_generate():
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=64)).eval()
    assert not supports_fast_decode(gpt2)
    scaled = tiny_llama()
    scaled.config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    assert not supports_fast_decode(scaled)
    ids, mask = prompts()
    assert torch.equal(decode(gpt2, ids, mask, 8, EOS, PAD), generate(gpt2, ids, mask, do_sample=False, max_new=8))
