"""Step-level reward distillation: segmentation, exact step labels, the PRM, the per-step objective."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rtd_lab.prm as prm_mod
from rtd_lab.data.example import ReasoningExample, Step
from rtd_lab.data.synthetic import FORMAT
from rtd_lab.data.tokenizer import build_synthetic_tokenizer
from rtd_lab.methods.step_reward import advantages
from rtd_lab.prm import (
    PRMConfig,
    ProcessRewardModel,
    marker_ids,
    pack_samples,
    per_step_stats,
    step_spans,
    token_logprobs,
)
from rtd_lab.tasks.train import train

SEP, ANS = 10, 11  # stand-in ids for " ; " and "####"


@pytest.mark.parametrize(
    ("completion", "spans"),
    [
        # "7 + 3 = 10 ; 10 * 2 = 9 #### 9": " ; " opens step 2, "#### 9" closes it
        ([1, 2, 3, 4, 5, SEP, 5, 6, 7, 4, 8, ANS, 8], [(0, 4, 5), (5, 10, 13)]),
        # an empty step (two separators in a row) has its opening separator as boundary
        ([1, 2, SEP, SEP, 3, ANS, 3], [(0, 1, 2), (2, 2, 3), (3, 4, 7)]),
        # no answer marker: what follows the last separator is an unfinished step
        ([1, 2, SEP, 3, 4], [(0, 1, 2), (2, 4, 5)]),
        # a dangling separator is a step of its own (one more step was started, none finished)
        ([1, 2, SEP], [(0, 1, 2), (2, 2, 3)]),
        ([], []),
    ],
)
def test_step_spans(completion, spans):
    assert step_spans(completion, SEP, ANS) == spans


def _example():
    steps = (Step("7 + 3 = 10", 10), Step("10 * 2 = 9", 9))
    return ReasoningExample("q0", "a = 7 , b = a + 3 , c = b * 2 ; c ?", steps, 9, 2)


def test_pack_samples_labels_steps_by_exact_verification():
    tok = build_synthetic_tokenizer(11)
    sep, ans = marker_ids(tok, FORMAT)
    ex = _example()
    prompt = tok(ex.question + FORMAT.prompt_suffix)["input_ids"]
    texts = ["7 + 3 = 10 ; 10 * 2 = 9 #### 9", "7 + 3 = 10 ; 10 * 2 = 8 ; 8 + 1 = 9 #### 9", "7 + 3 = 4 #### 4"]
    comps = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    N = max(map(len, comps))
    gen = torch.full((3, len(prompt) + N), tok.pad_token_id)
    for b, c in enumerate(comps):
        gen[b, : len(prompt)] = torch.tensor(prompt)
        gen[b, len(prompt) : len(prompt) + len(c)] = torch.tensor(c)
    prompt_ids = torch.tensor([prompt] * 3)
    packed = pack_samples(prompt_ids, torch.ones_like(prompt_ids), gen, [ex] * 3, tok, sep, ans)
    assert packed.step_mask.tolist() == [[True, True, False], [True, True, True], [True, False, False]]
    # right, right | right, wrong value, one step too many | wrong value
    assert packed.correct.tolist() == [[True, True, False], [True, False, False], [False, False, False]]
    # Boundaries are the value tokens; every completion token (and <eos>) is credited to a step.
    ids = packed.input_ids
    assert tok.decode([int(ids[0, packed.boundary_pos[0, 0]])]) == "10"
    assert tok.decode([int(ids[1, packed.boundary_pos[1, 1]])]) == "8"
    n_real = [len(prompt) + len(c) for c in comps]
    for b in range(3):
        assert (packed.token_step[b, : len(prompt)] == -1).all()
        assert (packed.token_step[b, len(prompt) : n_real[b]] >= 0).all()
        assert (packed.token_step[b, n_real[b] :] == -1).all()


def test_marker_ids_refuse_multi_token_separators():
    class Splitting:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": list(range(len(text)))}

    with pytest.raises(ValueError, match="answer marker '####'"):
        marker_ids(Splitting(), FORMAT)


def test_per_step_stats_match_a_loop():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(3, 9, generator=g)
    token_step = torch.tensor([[-1, 0, 0, 1, 1, 1, -1, -1, -1], [-1, -1, 0, 0, 0, 0, 0, 1, 2], [-1] * 9])
    mean, low = per_step_stats(values, token_step, 3)
    for b in range(3):
        for s in range(3):
            sel = values[b][token_step[b] == s]
            assert float(mean[b, s]) == pytest.approx(float(sel.mean()) if len(sel) else 0.0, abs=1e-6)
            assert float(low[b, s]) == pytest.approx(float(sel.min()) if len(sel) else 0.0, abs=1e-6)


def test_token_logprobs():
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    lp = token_logprobs(logits, ids)
    assert lp[:, 0].eq(0).all()
    assert float(lp[1, 3]) == pytest.approx(float(torch.log_softmax(logits[1, 2], -1)[ids[1, 3]]), abs=1e-6)


def test_advantages():
    r = torch.tensor([[0.9, 0.1, 0.0], [0.5, 0.0, 0.0]])
    m = torch.tensor([[True, True, False], [True, False, False]])
    assert torch.equal(advantages(r, m, "raw"), r)
    c = advantages(r, m, "centered")
    assert float(c[m].sum()) == pytest.approx(0.0, abs=1e-6)
    n = advantages(r, m, "normalized")
    assert float(n[m].mean()) == pytest.approx(0.0, abs=1e-6) and float(n[m].std()) == pytest.approx(1.0, abs=1e-4)


def test_prm_config_errors_name_fields():
    with pytest.raises(ValueError, match="method.prm.temperatures"):
        PRMConfig(temperatures=[])
    with pytest.raises(ValueError, match="method.prm.include_gold"):
        PRMConfig(include_gold="sometimes")


def _sr_cfg(make_cfg, *extra):
    return make_cfg(
        "+experiment=step_reward",
        "method.prm.n_questions=24",
        "method.prm.samples_per_question=1",
        "method.prm.epochs=20",
        *extra,
    )


def test_step_reward_runs_end_to_end_and_caches_its_prm(make_cfg, monkeypatch):
    # The tiny teacher is untrained: it samples no correct step, so include_gold=auto adds the gold traces.
    cfg = _sr_cfg(make_cfg)
    results = train(cfg)
    prm = results["method_info"]["prm"]
    assert prm["report"]["gold_added"] is True
    assert 0.0 < prm["report"]["positive_rate"] < 1.0
    assert prm["report"]["n_heldout_steps"] > 0 and 0.0 <= prm["report"]["heldout_accuracy"] <= 1.0
    path = Path(prm["source"])
    assert (path / "prm.safetensors").exists() and json.loads((path / "prm.json").read_text())["key"] == path.name
    header = (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").read_text().splitlines()[0]
    for key in ("train/loss_kd", "train/loss_prm", "train/reward", "train/sample_step_acc", "train/prm_agreement"):
        assert key in header
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    assert not any(k.startswith(("prm.", "teacher.")) for k in ckpt["state_dict"])

    def no_training(*args, **kwargs):
        raise AssertionError("the cached PRM should have been reused")

    monkeypatch.setattr(prm_mod, "train_prm", no_training)
    assert train(_sr_cfg(make_cfg))["method_info"]["prm"]["key"] == prm["key"]


def test_step_reward_without_gold_and_untrained_teacher_is_a_clear_error(make_cfg):
    with pytest.raises(ValueError, match="every teacher-sampled step is wrong"):
        train(_sr_cfg(make_cfg, "method.prm.include_gold=false"))


def _module_with_fixed_prm(make_cfg, *extra):
    """A StepReward module outside a fit, with a PRM whose scores we choose (seeded uniform)."""
    import hydra
    from omegaconf import OmegaConf

    from rtd_lab.data.datamodule import ReasoningDataModule
    from rtd_lab.evaluation import Evaluator
    from rtd_lab.methods.step_reward import StepReward
    from rtd_lab.models.provision import prepare_student, prepare_teacher
    from rtd_lab.tasks.settings import build_context, student_settings, teacher_settings

    cfg = _sr_cfg(make_cfg, *extra)
    bm = hydra.utils.instantiate(cfg.data.benchmark)
    teacher, tok, _ = prepare_teacher(teacher_settings(cfg.teacher), build_context(cfg), bm)
    dm = ReasoningDataModule.gold(bm, tok, cfg.data.batch_size, cfg.data.eval_batch_size)
    method = OmegaConf.to_container(cfg.method, resolve=True)
    module: StepReward = hydra.utils.instantiate(
        method,
        student=prepare_student(student_settings(cfg.student), build_context(cfg), tok, teacher, cfg.seed),
        teacher=teacher,
        optimizer=None,
        evaluator=Evaluator(tok, bm),
    )

    class FakeTrainer:
        datamodule = dm

    module._trainer = FakeTrainer()  # what compute_losses reads; no fit needed
    module._markers = marker_ids(tok, bm.format)
    scores = {"calls": 0}

    class FixedPRM(ProcessRewardModel):
        def score(self, teacher_model, batch):
            g = torch.Generator().manual_seed(1)
            r = torch.rand(batch.step_mask.shape, generator=g) * batch.step_mask
            scores["r"], scores["batch"] = r, batch
            scores["calls"] += 1
            return r

    module.__dict__["prm"] = FixedPRM(4)
    return module, dm, scores


def _expected_prm_loss(module, sb, r):
    A = advantages(r, sb.step_mask, "normalized")
    with torch.no_grad():  # a reference value, not a graph
        logp = token_logprobs(module.student(input_ids=sb.input_ids).logits, sb.input_ids)
    expected, n = 0.0, 0
    for b in range(sb.input_ids.size(0)):
        for t in range(sb.input_ids.size(1)):
            s = int(sb.token_step[b, t])
            if s >= 0:
                expected -= float(A[b, s]) * float(logp[b, t])
                n += 1
    return expected / n


def test_prm_objective_is_the_advantage_weighted_step_nll(make_cfg):
    """compute_losses against the formula of the module docstring, with a PRM whose scores we choose."""
    module, dm, scores = _module_with_fixed_prm(make_cfg, "method.w_reward=2.0")
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    losses = module.compute_losses(batch, module.item_counts(batch))

    expected = _expected_prm_loss(module, scores["batch"], scores["r"])
    assert float(losses["prm"]) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert float(losses["loss"]) == pytest.approx(float(losses["kd"]) + 2.0 * expected, rel=1e-4, abs=1e-6)


def test_rollouts_every_k_steps_give_each_step_its_own_set(make_cfg, monkeypatch):
    """rollout_every=3: one decoding call (3 samples per question) and one PRM pass serve 3 steps;
    each step trains on its own set of one sample per question, with the objective of k = 1."""
    module, dm, scores = _module_with_fixed_prm(make_cfg, "method.rollout_every=3")
    batches = iter(dm.train_dataloader())
    import rtd_lab.methods.base as base

    rows = []

    def counting_decode(model, prompt_ids, *args, **kwargs):
        rows.append(prompt_ids.size(0))
        return decode(model, prompt_ids, *args, **kwargs)

    decode = base.decode
    monkeypatch.setattr(base, "decode", counting_decode)
    torch.manual_seed(0)
    seen = []
    for _ in range(4):
        batch = next(batches)
        n_q = batch["prompt_ids"].size(0)
        losses = module.compute_losses(batch, module.item_counts(batch))
        assert len(module._rollouts) in (0, 1, 2)
        seen.append(float(losses["prm"]))
    assert rows == [3 * n_q, 3 * n_q]  # steps 1 and 4 drew; steps 2 and 3 reused
    assert scores["calls"] == 2
    # The next step trains on the next set; its loss by the formula, from that set.
    assert scores["batch"].input_ids.size(0) == 3 * n_q  # the PRM scored the second draw's 3 sets at once
    sb, r = module._rollouts[0]  # the second set of the second draw, trimmed as a step sees it
    assert sb.input_ids.size(0) == n_q and r.shape == sb.step_mask.shape
    assert (sb.token_step >= 0).any(0)[-1]  # trimmed: the last column is used by some row
    assert float(module.compute_losses(batch, module.item_counts(batch))["prm"]) == pytest.approx(
        _expected_prm_loss(module, sb, r), rel=1e-4, abs=1e-6
    )
    assert len(set(seen)) == 4  # every step had its own samples
    module.eval()  # validation draws for its own batch and leaves the training sets alone
    waiting = len(module._rollouts)
    module.compute_losses(batch, module.item_counts(batch))
    assert len(module._rollouts) == waiting and rows[-1] == n_q


def test_rollout_every_is_checked(make_cfg):
    from rtd_lab.methods.step_reward import StepReward

    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="method.rollout_every"):
            StepReward.check_settings({"rollout_every": bad})
