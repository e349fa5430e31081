"""The SEENN-II objective: rewards per timestep candidate and the exact-expectation policy gradient.

The policy sees x once and gives v = softmax(scores) [B, K] over the candidates t_1 < .. < t_K.
The expected reward of a sample is J = sum_k v_k R(t_k), so

    grad J = sum_k R(t_k) grad v_k = sum_k R(t_k) v_k grad log v_k      (the paper's eq. 10)

exactly, with no sampling: one pass of the frozen SNN over t_K steps says whether its prediction
is right at every candidate, which fixes every R(t_k). Minimising -J by autograd gives that
gradient; REINFORCE (sample k ~ v, step along R(t_k) grad log v_k) estimates it with variance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Reward:
    """R(t) = 1/2^t where the SNN is right after t steps, -beta where it is wrong.

    shift: the reference code's 1/2^(t-1) (R(1) = 1) instead of 1/2^t.
    balance_first: the reference code's re-weighting: a sample wrong at the first candidate
    weighs rate / (1 - rate), rate = the share right there, so right and wrong weigh alike.
    """

    beta: float
    shift: bool = False
    balance_first: bool = False

    def table(self, correct: Tensor, candidates: Sequence[int]) -> Tensor:
        """correct bool [B, K] (the SNN right at each candidate) -> R [B, K]."""
        exponent = torch.tensor(candidates, dtype=torch.float32, device=correct.device) - (1.0 if self.shift else 0.0)
        return torch.where(correct, 2.0 ** -exponent, torch.full_like(exponent, -self.beta))

    def weights(self, correct: Tensor, rate: float) -> Tensor | None:
        """Per-sample weights [B] (None: all 1); `rate` is the share of training rows right at the first candidate."""
        if not self.balance_first or not 0.0 < rate < 1.0:
            return None
        first = correct[:, 0].to(torch.float32)
        return first + (1.0 - first) * (rate / (1.0 - rate))

    def to_dict(self) -> dict:
        return {"beta": self.beta, "shift": self.shift, "balance_first": self.balance_first}


def expected_reward(scores: Tensor, rewards: Tensor, weights: Tensor | None = None) -> Tensor:
    """Batch mean of (weighted) J = sum_k softmax(scores)_k R_k; scores, rewards [B, K]. Its gradient is eq. 10.

    The rewards carry no gradient: they judge the SNN's answers, which the policy does not change.
    """
    per_sample = (torch.softmax(scores, dim=1) * rewards.detach()).sum(dim=1)
    if weights is not None:
        per_sample = per_sample * weights
    return per_sample.mean()


def accumulated_means(logits: Tensor, candidates: Sequence[int]) -> Tensor:
    """logits [T, B, C] (T >= t_K) -> the mean of the first t_k outputs for every candidate [K, B, C]."""
    idx = torch.tensor([t - 1 for t in candidates], device=logits.device)
    counts = torch.tensor(candidates, dtype=logits.dtype, device=logits.device).view(-1, 1, 1)
    return logits.cumsum(0)[idx] / counts


def correct_at(logits: Tensor, labels: Tensor, candidates: Sequence[int]) -> Tensor:
    """logits [T, B, C], labels [B] -> bool [B, K]: the SNN's prediction after t_k steps is right."""
    return (accumulated_means(logits, candidates).argmax(-1) == labels).T


@dataclass(frozen=True)
class PolicyScore:
    """How a policy's choices do on a set of rows: accuracy and average timesteps at argmax v, mean reward."""

    accuracy: float
    average_timesteps: float
    reward: float
    shares: list[float]  # of the rows sent to each candidate
    samples: int

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "average_timesteps": self.average_timesteps, "reward": self.reward,
                "shares": self.shares, "samples": self.samples}

    def line(self) -> str:
        return f"acc {100 * self.accuracy:.2f}%  avg T {self.average_timesteps:.3f}  reward {self.reward:.4f}"


def score_choices(choice: np.ndarray, correct: np.ndarray, candidates: Sequence[int], reward: Reward) -> PolicyScore:
    """choice int [N] (candidate index per row), correct bool [N, K] -> the score of those choices (unweighted)."""
    rows = np.arange(len(choice))
    right = correct[rows, choice]
    steps = np.asarray(candidates)[choice]
    gained = reward.table(torch.from_numpy(correct), candidates).numpy()[rows, choice]
    shares = np.bincount(choice, minlength=len(candidates)) / max(len(choice), 1)
    return PolicyScore(float(right.mean()), float(steps.mean()), float(gained.mean()), shares.tolist(), len(choice))
