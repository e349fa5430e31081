"""Exit policies: how many steps a sample may take, and whether it stops now.

A policy is a small object; adding one touches this file only. The confidence is computed in
the step graph (max softmax of the accumulated logits), so a policy reads O(B) numbers per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from seenn_deploy.errors import UserError
from seenn_deploy.runtime.executors.base import Executor
from seenn_deploy.runtime.manifest import X, Manifest


class ExitPolicy:
    """Base: `budgets` at admission (max steps per sample), `exits` after every step."""

    name = "exit"

    def budgets(self, x: np.ndarray, t_max: int) -> np.ndarray:
        """Max steps for each admitted sample; x is the normalised input [n, ...]."""
        raise NotImplementedError

    def exits(self, confidence: np.ndarray, steps: np.ndarray, budget: np.ndarray) -> np.ndarray:
        """bool [b]: which rows stop after this step (steps already counts it). Also called with Python
        scalars (float, int, int: one row at batch 1), so write it with operators that work on both."""
        return steps >= budget

    def describe(self) -> str:
        return self.name


@dataclass
class Fixed(ExitPolicy):
    """Every sample runs exactly T steps."""

    timesteps: int
    name = "fixed"

    def __post_init__(self) -> None:
        if self.timesteps < 1:
            raise UserError(f"fixed:T needs T >= 1, got {self.timesteps}")

    def budgets(self, x: np.ndarray, t_max: int) -> np.ndarray:
        if self.timesteps > t_max:
            raise UserError(f"fixed:{self.timesteps} exceeds the bundle's T_max {t_max}")
        return np.full(len(x), self.timesteps, dtype=np.int64)

    def describe(self) -> str:
        return f"fixed:{self.timesteps}"


@dataclass(frozen=True)
class Confidence(ExitPolicy):
    """SEENN-I: stop as soon as the confidence is strictly above alpha, or at T_max."""

    alpha: float
    name = "confidence"
    # alpha rounded to float32, the confidence's type: the same comparison for float32 arrays and
    # for Python floats (the batch-1 path), where comparing with alpha itself could differ at a tie
    threshold: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"confidence:A needs 0 <= A <= 1, got {self.alpha}")
        object.__setattr__(self, "threshold", float(np.float32(self.alpha)))  # frozen: alpha and threshold agree

    def budgets(self, x: np.ndarray, t_max: int) -> np.ndarray:
        return np.full(len(x), t_max, dtype=np.int64)

    def exits(self, confidence: np.ndarray, steps: np.ndarray, budget: np.ndarray) -> np.ndarray:
        return (confidence > self.threshold) | (steps >= budget)

    def describe(self) -> str:
        return f"confidence:{self.alpha:g}"


@dataclass
class Policy(ExitPolicy):
    """SEENN-II: the policy network looks at each sample once and picks T from the candidates."""

    executor: Executor
    candidates: list[int] = field(default_factory=list)
    name = "policy"

    def __post_init__(self) -> None:
        if not self.candidates:
            raise UserError("the policy exit needs timestep candidates; the bundle lists none")

    def budgets(self, x: np.ndarray, t_max: int) -> np.ndarray:
        scores = self.executor.run({X: x})["scores"]
        return np.asarray(self.candidates, dtype=np.int64)[scores.argmax(axis=1)]

    def describe(self) -> str:
        return f"policy:{','.join(map(str, self.candidates))}"


def parse_exit(text: str | None, manifest: Manifest, policy_executor: Executor | None = None) -> ExitPolicy:
    """'fixed:T' | 'confidence:A' | 'confidence' (the bundle's calibrated alpha) | 'policy'; None: the bundle's default."""
    if text is None:
        if manifest.exit.kind == "confidence" and manifest.exit.alpha is not None:
            return Confidence(manifest.exit.alpha)
        if manifest.exit.kind == "policy" and policy_executor is not None:
            return Policy(policy_executor, manifest.exit.candidates)
        return Fixed(manifest.timesteps)
    kind, _, arg = text.partition(":")
    try:
        if kind == "fixed":
            return Fixed(int(arg) if arg else manifest.timesteps)
        if kind == "confidence":
            if arg:
                return Confidence(float(arg))
            if manifest.exit.alpha is None:
                raise UserError("the bundle has no calibrated alpha: give confidence:ALPHA or run `seenn-deploy calibrate`")
            return Confidence(manifest.exit.alpha)
    except ValueError:
        raise UserError(f"--exit {text!r}: the number after ':' is not valid") from None
    if kind == "policy":
        if policy_executor is None:
            raise UserError("--exit policy needs a bundle with policy.onnx (export a checkpoint that has a policy)")
        return Policy(policy_executor, manifest.exit.candidates)
    raise UserError(f"--exit {text!r} is not fixed:T, confidence:ALPHA, confidence or policy")
