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

The separator token closing a step, and the answer after "####" (with <eos>), are credited to
the step they close, so the decision to stop is rewarded with the last step. Logged: the mean PRM
reward, the sampled steps' exact correctness (``sample_step_acc``) and how often the PRM agrees
with it on the student's samples (``prm_agreement``: the PRM was trained on the teacher's).
"""

from __future__ import annotations

from typing import Any

import hydra
import torch
from transformers import GenerationConfig

from rtd_lab.methods.base import ItemCounts, check_weights
from rtd_lab.methods.standard_kd import StandardKD
from rtd_lab.prm import PRMConfig, load_or_train_prm, marker_ids, pack_samples, token_logprobs

ADVANTAGES = ("normalized", "centered", "raw")


class StepReward(StandardKD):
    diagnostics = ("reward", "sample_step_acc", "prm_agreement")

    # The KD settings (alpha, temperature, divergence, beta) and self.kd come from StandardKD.
    def __init__(
        self,
        *args,
        w_reward: float = 1.0,
        sample_temperature: float = 1.0,
        samples_per_batch: int | None = None,
        advantage: str = "normalized",
        prm: dict | None = None,
        cache_dir: str = ".cache/rtd_lab",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        settings = {"w_reward": w_reward, "sample_temperature": sample_temperature, "advantage": advantage}
        self.check_settings({**settings, "samples_per_batch": samples_per_batch})
        self.w_reward = float(w_reward)
        self.sample_temperature = float(sample_temperature)
        self.samples_per_batch = samples_per_batch
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
        if "advantage" in settings and settings["advantage"] not in ADVANTAGES:
            raise ValueError(f"method.advantage must be one of {list(ADVANTAGES)}, got {settings['advantage']!r}")
        if "prm" in settings:
            PRMConfig(**(settings["prm"] or {}))

    def on_fit_start(self) -> None:
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
    def sample(self, batch: dict):
        n = batch["prompt_ids"].size(0) if self.samples_per_batch is None else self.samples_per_batch
        prompt_ids, prompt_mask = batch["prompt_ids"][:n], batch["prompt_mask"][:n]
        tokenizer = self.evaluator.tokenizer
        gen = GenerationConfig(
            do_sample=True,
            temperature=self.sample_temperature,
            top_k=0,
            max_new_tokens=self.evaluator.benchmark.max_completion_tokens(),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        was_training = self.student.training
        self.student.eval()
        out = self.student.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=gen)
        self.student.train(was_training)
        packed = pack_samples(prompt_ids, prompt_mask, out, batch["examples"][:n], tokenizer, *self._markers)
        return type(packed)(*(t.to(self.device) for t in vars(packed).values()))

    def compute_losses(self, batch: dict, n: ItemCounts) -> dict[str, torch.Tensor]:
        self.ensure_prm()
        s = self.student_forward(batch)
        t = self.teacher_forward(batch)  # the KD anchor may come from the offline cache; the PRM runs online
        kd = self.kd(s.logits, t.logits, batch["labels"], n.tokens)

        sampled = self.sample(batch)
        reward = self.prm.score(self.teacher.model, sampled)  # (B, S), 0 on padded steps
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
