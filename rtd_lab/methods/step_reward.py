"""Step-level reward distillation (a baseline of the RTD paper): the student trained with per-step feedback
from a process reward model (PRM).

Each training step, for the batch's questions x:

  1. the student samples a trace y ~ pi_S(. | x) (temperature ``sample_temperature``), which is
     cut into steps y = (s_1, ..., s_n) at the step separators (``rtd_lab.prm.step_spans``);
  2. the PRM, trained beforehand on teacher-sampled steps labelled by exact verification
     (``rtd_lab.prm``), scores every step: r_i = P(s_i correct | x, s_<=i) in (0, 1);
  3. the student's loss on its own sample is each step's negative log-likelihood weighted by that
     step's advantage A_i, its score against the batch's other steps:

        A_i   = (r_i - mean(r)) / (std(r) + 1e-6)        over the real steps of the batch
        L_PRM = - (1/N) * sum_{samples} sum_i A_i * sum_{t in s_i} log pi_S(y_t | x, y_<t)

     N = number of sampled tokens. Steps the PRM rates above the batch average become more
     likely, steps below it less likely: REINFORCE with per-step rewards, a mean baseline and
     normalised advantages (as in PPO/GRPO practice; without the division a batch of uniformly
     poor samples gives a vanishing signal). ``advantage: centered`` drops the division,
     ``advantage: raw`` uses A_i = r_i (plain reward-weighted likelihood, every weight >= 0);
  4. the total, so that the student also sees the teacher's own traces, is

        L = L_KD + w_reward * L_PRM

     with L_KD the standard-KD term on the gold traces (alpha, T as in ``standard_kd``).
     ``w_reward = 0`` is exactly standard KD.

``rollout_every = k > 1`` samples as PPO-style trainers do: one decoding call every k steps
draws k traces for each question of that step's batch (decoding runs position by position, and k
sets drawn together cost less than k draws: docs/scale.md), the PRM scores them at once, and each of
the next k training steps trains on one of the k sets (0..k-1 optimiser steps old). Every step still
has one sample per question and its own advantages; k = 1 is the on-policy original. Validation
always draws for its own batch. The sets waiting are not checkpointed: a resumed run draws afresh at
its first step.

The separator token closing a step, and the answer after "####" (with <eos>), are credited to
the step they close, so the decision to stop is rewarded with the last step. Logged: the mean PRM
reward, the sampled steps' exact correctness (``sample_step_acc``) and how often the PRM agrees
with it on the student's samples (``prm_agreement``: the PRM was trained on the teacher's).
"""

from __future__ import annotations

from typing import Any

import hydra
import torch

from rtd_lab.methods.base import ItemCounts, check_weights
from rtd_lab.methods.standard_kd import StandardKD
from rtd_lab.prm import PRMConfig, load_or_train_prm, marker_ids, pack_samples, token_logprobs

ADVANTAGES = ("normalized", "centered", "raw")


class StepReward(StandardKD):
    diagnostics = ("reward", "sample_step_acc", "prm_agreement")
    single_path_only = True  # the PRM's labels (prm.pack_samples) compare each step with the gold one at its index

    # The KD settings (alpha, temperature, divergence, beta) and self.kd come from StandardKD.
    def __init__(
        self,
        *args,
        w_reward: float = 1.0,
        sample_temperature: float = 1.0,
        samples_per_batch: int | None = None,
        rollout_every: int = 1,
        advantage: str = "normalized",
        prm: dict | None = None,
        cache_dir: str = ".cache/rtd_lab",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        settings = {"w_reward": w_reward, "sample_temperature": sample_temperature, "advantage": advantage}
        self.check_settings({**settings, "samples_per_batch": samples_per_batch, "rollout_every": rollout_every})
        self.w_reward = float(w_reward)
        self.sample_temperature = float(sample_temperature)
        self.samples_per_batch = samples_per_batch
        self.rollout_every = int(rollout_every)
        self._rollouts: list = []  # (samples, rewards) for the coming steps (rollout_every > 1)
        self.advantage = advantage
        self.prm_config = PRMConfig(**(prm or {}))
        self.cache_dir = cache_dir
        # The PRM is a frozen scorer cached on disk, built by ensure_prm() once the data and the
        # device are known: not a registered submodule, so neither optimised nor checkpointed.
        self.prm = None
        self.prm_info: dict[str, Any] = {}
        self._markers: tuple[int, int] | None = None  # token ids of the step separator, answer marker

    @classmethod
    def check_settings(cls, settings: dict) -> None:
        super().check_settings(settings)
        check_weights(settings, "w_reward")
        if "sample_temperature" in settings and not settings["sample_temperature"] > 0:
            raise ValueError(f"method.sample_temperature must be > 0, got {settings['sample_temperature']}")
        if settings.get("samples_per_batch") is not None and settings["samples_per_batch"] < 1:
            raise ValueError(f"method.samples_per_batch must be >= 1 or null, got {settings['samples_per_batch']}")
        every = settings.get("rollout_every", 1)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"method.rollout_every must be an integer >= 1, got {every!r}")
        if "advantage" in settings and settings["advantage"] not in ADVANTAGES:
            raise ValueError(f"method.advantage must be one of {list(ADVANTAGES)}, got {settings['advantage']!r}")
        if "prm" in settings:
            PRMConfig(**(settings["prm"] or {}))

    def on_fit_start(self) -> None:
        self._rollouts = []
        self.ensure_prm()  # before the first step, so the PRM's report is in the log up front

    def ensure_prm(self) -> None:
        """Load the cached PRM, or sample the teacher and train it (on this module's device)."""
        if self.prm is not None:
            if self.prm.mean.device != self.device:
                self.prm.to(self.device)
            return
        dm = self.trainer.datamodule  # the PRM trains on the run's training split
        tokenizer, benchmark = self.evaluator.tokenizer, self.evaluator.benchmark
        self._markers = marker_ids(tokenizer, benchmark.format)
        teacher_model = self.teacher.model.to(self.device)
        prm, info = load_or_train_prm(
            teacher_model,
            dm.encoded["train"],
            tokenizer,
            benchmark.format,
            self.prm_config,
            cache_dir=hydra.utils.to_absolute_path(self.cache_dir),
            key_parts={
                "teacher": str(teacher_model.name_or_path),
                "benchmark": getattr(benchmark, "cfg", type(benchmark).__name__),
            },
            batch_size=dm.eval_batch_size,
            max_new=benchmark.max_completion_tokens(),
        )
        self.__dict__["prm"] = prm.to(self.device)  # bypasses nn.Module registration (see __init__)
        self.prm_info = info

    def summary(self) -> dict:
        return {"prm": self.prm_info}

    @torch.no_grad()
    def sample(self, batch: dict, copies: int = 1):
        """The student's traces for the batch's questions, ``copies`` sets of them stacked (rows
        c·n … c·n + n − 1 are set c)."""
        n = batch["prompt_ids"].size(0) if self.samples_per_batch is None else self.samples_per_batch
        prompt_ids, prompt_mask = batch["prompt_ids"][:n].repeat(copies, 1), batch["prompt_mask"][:n].repeat(copies, 1)
        out = self.sample_student(prompt_ids, prompt_mask, self.sample_temperature)
        examples = list(batch["examples"][:n]) * copies
        packed = pack_samples(prompt_ids, prompt_mask, out, examples, self.evaluator.tokenizer, *self._markers)
        return type(packed)(*(t.to(self.device) for t in vars(packed).values()))

    def next_rollout(self, batch: dict):
        """This step's samples and their PRM rewards: drawn now (rollout_every = 1), or the next of the
        sets drawn at the last refill (see the module docstring)."""
        if not self.training:  # validation: the batch's own questions, never the training sets
            sampled = self.sample(batch)
            return sampled, self.prm.score(self.teacher.model, sampled)
        if not self._rollouts:
            k = self.rollout_every
            sampled = self.sample(batch, copies=k)
            reward = self.prm.score(self.teacher.model, sampled)  # (k·n, S), 0 on padded steps
            n = sampled.input_ids.size(0) // k
            if k == 1:  # as drawn: the on-policy original, bit for bit
                return sampled, reward
            for c in range(k):
                rows = slice(c * n, (c + 1) * n)
                part = type(sampled)(*(t[rows] for t in vars(sampled).values()))
                self._rollouts.append(trim(part, reward[rows]))
        return self._rollouts.pop(0)

    def compute_losses(self, batch: dict, n: ItemCounts) -> dict[str, torch.Tensor]:
        self.ensure_prm()
        s = self.student_forward(batch)
        t = self.teacher_forward(batch)  # the KD anchor may come from the offline cache; the PRM runs online
        kd = self.kd(s.logits, t.logits, batch["labels"], n.tokens)

        sampled, reward = self.next_rollout(batch)  # reward (B, S), 0 on padded steps
        mask = sampled.step_mask
        weight = torch.where(mask, advantages(reward, mask, self.advantage), torch.zeros_like(reward))  # (B, S)
        # Per-token weight: the weight of the step the token is credited to; 0 on prompt/padding.
        tok_step = sampled.token_step
        w_tok = weight.gather(1, tok_step.clamp(min=0)) * (tok_step >= 0)  # (B, T)
        logits = self.student(input_ids=sampled.input_ids, use_cache=False).logits
        logp = token_logprobs(logits, sampled.input_ids)  # (B, T)
        n_tokens = (tok_step >= 0).sum().clamp(min=1)
        l_prm = -(w_tok * logp).sum() / n_tokens

        loss = kd.loss + self.w_reward * l_prm
        agree = ((reward >= 0.5) == sampled.correct).float()
        return {
            "loss": loss,
            "kd": kd.loss.detach(),
            "prm": l_prm.detach(),
            "reward": masked_mean(reward, mask).detach(),
            "sample_step_acc": masked_mean(sampled.correct.float(), mask),
            "prm_agreement": masked_mean(agree, mask),
        }


def trim(sampled, reward: torch.Tensor):
    """Drop the token and step columns that no row uses (a set cut from a larger rollout is padded to
    the longest trace of all k sets); the loss is the same, the student's forward shorter."""
    used = (sampled.token_step >= 0).any(0).nonzero()
    last = int(used.max()) + 1 if len(used) else 1
    steps = max(1, int(sampled.step_mask.sum(1).max()))
    cut = {
        name: t[:, :last] if name in ("input_ids", "token_step") else t[:, :steps] for name, t in vars(sampled).items()
    }
    return type(sampled)(**cut), reward[:, :steps]


def advantages(reward: torch.Tensor, mask: torch.Tensor, kind: str = "normalized") -> torch.Tensor:
    """A_i of the module docstring for (B, S) rewards; statistics over the real steps only."""
    if kind == "raw" or not mask.any():
        return reward
    centered = reward - reward[mask].mean()
    if kind == "centered" or int(mask.sum()) < 2:
        return centered
    return centered / (reward[mask].std() + 1e-6)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` where ``mask``; 0 when nothing is (a batch of samples without a single step)."""
    return x[mask].mean() if mask.any() else x.new_zeros(())
