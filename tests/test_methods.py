"""The methods as LightningModules: losses wired to the batch, logged, and trained."""

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rtd_lab.data.datamodule import ReasoningDataModule
from rtd_lab.data.synthetic import SyntheticBenchmark
from rtd_lab.data.tokenizer import build_synthetic_tokenizer
from rtd_lab.losses import align_loss, coherence_loss, gather_boundaries, kd_loss, transitions
from rtd_lab.methods.base import ItemCounts
from rtd_lab.methods.cot_ft import CoTFineTune
from rtd_lab.methods.rtd import RTD
from rtd_lab.methods.standard_kd import StandardKD
from rtd_lab.models.teacher import Teacher


def tiny_lm(tok, width=16, layers=2, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
    )
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="module")
def setup():
    tok = build_synthetic_tokenizer(11)
    bm = SyntheticBenchmark(modulus=11, max_depth=3, n_train_per_depth=16, n_val_per_depth=4, n_test_per_depth=4)
    dm = ReasoningDataModule.gold(bm, tok, 12, 12)
    batch = next(iter(dm.train_dataloader()))
    return tok, batch


def test_teacher_is_frozen_and_stays_in_eval(setup):
    tok, batch = setup
    teacher = Teacher(tiny_lm(tok, 24))
    teacher.train()
    assert not teacher.training and not teacher.model.training
    out = teacher(batch["input_ids"], batch["boundary_pos"])
    assert not out.logits.requires_grad
    assert out.boundary_hidden.shape == (*batch["boundary_pos"].shape, 24)
    with pytest.raises(ValueError, match="teacher.layer"):
        Teacher(tiny_lm(tok), layer=7)


def test_teacher_boundary_states_are_the_chosen_layer(setup):
    tok, batch = setup
    model = tiny_lm(tok, 24)
    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    for layer in (-1, 1, "mean"):
        out = Teacher(model, layer=layer)(batch["input_ids"], batch["boundary_pos"])
        states = hidden.hidden_states
        at_layer = (states[1] + states[2]) / 2 if layer == "mean" else states[layer]  # mean: every block's output
        torch.testing.assert_close(out.boundary_hidden, gather_boundaries(at_layer, batch["boundary_pos"]))
    with pytest.raises(ValueError, match="teacher.layer"):
        Teacher(model, layer="middle")


def test_rtd_trains_on_the_mean_teacher_layer_from_the_offline_cache(make_cfg):
    """teacher.layer=mean end to end: the cache stores the mean states, the run aligns to them."""
    from rtd_lab.tasks.train import train

    results = train(make_cfg("teacher.layer=mean", "teacher_cache.mode=build", "diagnostics.quantize=[]"))
    manifest = json.loads((Path(results["teacher_cache"]["path"]) / "manifest.json").read_text())
    assert manifest["spec"]["layer"] == "mean"
    assert 0.0 <= results["student"]["metrics"]["chain_acc"] <= 1.0


def test_rtd_loss_is_kd_plus_weighted_terms(setup):
    tok, batch = setup
    teacher = Teacher(tiny_lm(tok, 24, seed=1))
    module = RTD(tiny_lm(tok, 16), teacher, w_align=0.3, w_coherence=0.5)
    losses = module.compute_losses(batch, module.item_counts(batch))
    # Recompute independently from the parts.
    s = module.student(input_ids=batch["input_ids"], output_hidden_states=True)
    t = teacher(batch["input_ids"], batch["boundary_pos"])
    kd = kd_loss(s.logits[:, :-1], t.logits[:, :-1], batch["labels"][:, 1:], 0.7, 4.0).loss
    h_s = gather_boundaries(s.hidden_states[-1], batch["boundary_pos"])
    mask = batch["boundary_mask"]
    la = align_loss(module.f(h_s), t.boundary_hidden, mask)
    d_s, m = transitions(h_s, mask)
    d_t, _ = transitions(t.boundary_hidden, mask)
    lc = coherence_loss(module.g(d_s), d_t, m)
    assert losses["loss"].item() == pytest.approx((kd + 0.3 * la + 0.5 * lc).item(), rel=1e-5)
    assert losses["align"].item() > 0 and losses["coherence"].item() > 0
    # The projections learn: both get gradients from the total loss.
    losses["loss"].backward()
    assert module.f.weight.grad.abs().sum() > 0 and module.g.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_rtd_with_zero_weights_equals_standard_kd(setup):
    tok, batch = setup
    teacher = Teacher(tiny_lm(tok, 24, seed=1))
    rtd = RTD(tiny_lm(tok, 16, seed=3), teacher, w_align=0.0, w_coherence=0.0)
    kd = StandardKD(tiny_lm(tok, 16, seed=3), teacher)
    n = kd.item_counts(batch)
    expected = kd.compute_losses(batch, n)["loss"].item()
    assert rtd.compute_losses(batch, n)["loss"].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(w_align=-0.1), "method.w_align"),
        (dict(w_coherence=-1.0), "method.w_coherence"),
        (dict(temperature=0.0), "method.temperature"),
        (dict(alpha=1.5), "method.alpha"),
        (dict(student_layer=9), "method.student_layer"),
        (dict(student_layer="last"), "method.student_layer"),
        (dict(divergence="l2"), "method.divergence"),
        (dict(divergence="jsd", beta=1.5), "method.beta"),
    ],
)
def test_invalid_method_values_name_the_field(setup, kwargs, field):
    tok, _ = setup
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        RTD(tiny_lm(tok), Teacher(tiny_lm(tok)), **kwargs)


def test_kd_methods_need_a_teacher(setup):
    tok, _ = setup
    with pytest.raises(ValueError, match="teacher"):
        StandardKD(tiny_lm(tok))
    CoTFineTune(tiny_lm(tok))  # plain fine-tuning does not


def test_cot_ft_loss_is_ce_on_trace_tokens_only(setup):
    tok, batch = setup
    module = CoTFineTune(tiny_lm(tok))
    got = module.compute_losses(batch, module.item_counts(batch))["loss"]
    want = module.student(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
    ).loss
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_right_padding_makes_the_attention_mask_redundant(setup):
    """Why training forwards skip the mask: every supervised position's logits are unchanged."""
    tok, batch = setup
    model = tiny_lm(tok).eval()
    with_mask = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    without = model(input_ids=batch["input_ids"]).logits
    real = batch["attention_mask"].bool()
    assert (~real).any()  # the batch really is padded
    torch.testing.assert_close(with_mask[real], without[real], rtol=1e-5, atol=1e-5)


def test_item_counts_are_counted_once_per_batch_and_the_losses_divide_by_them(setup):
    tok, batch = setup
    module = RTD(tiny_lm(tok, 16, seed=3), Teacher(tiny_lm(tok, 24, seed=1)))
    n = module.item_counts(batch)
    assert int(n.tokens) == int((batch["labels"][:, 1:] != -100).sum())
    assert int(n.real_tokens) == int(batch["attention_mask"].sum())
    assert int(n.chains) == int(batch["boundary_mask"].any(1).sum())
    assert int(n.transition_chains) == int((batch["boundary_mask"].sum(1) >= 2).sum())

    # Every loss is a sum over items divided by the count it is handed: twice the items, half the loss.
    torch.manual_seed(0)
    once = module.compute_losses(batch, n)
    twice = module.compute_losses(batch, ItemCounts(*(2 * x for x in n)))
    for key in ("loss", "kd", "align", "coherence"):
        assert twice[key].item() == pytest.approx(once[key].item() / 2, rel=1e-5)

    # Under DDP training: one all-reduce of the four counts per batch, divided by the world size.
    calls = []

    class Strategy:
        def reduce(self, tensor, reduce_op):
            calls.append(tensor.clone())
            return tensor * 3  # three ranks with this batch's counts

    class Trainer:
        world_size, training, strategy = 3, True, Strategy()

    module._trainer = Trainer()
    reduced = module.item_counts(batch)
    assert len(calls) == 1 and calls[0].shape == (4,)
    assert [float(x) for x in reduced] == [float(x) for x in n]
    module._trainer = None
