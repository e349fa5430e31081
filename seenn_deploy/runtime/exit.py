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


def _threshold(alpha: float, spelling: str) -> float:
    """alpha checked and rounded to float32, the confidence's type: the same comparison for float32 arrays and
    for Python floats (the batch-1 path), where comparing with alpha itself could differ at a tie."""
    if not 0.0 <= alpha < 1.0:
        raise UserError(f"{spelling} needs 0 <= A < 1, got {alpha} (a confidence never exceeds 1: "
                        "for no early exit use fixed:T)")
    return float(np.float32(alpha))


class ExitPolicy:
    """Base: `budgets` at admission (max steps per sample), `exits` after every step."""

    name = "exit"

    def check(self, t_max: int) -> None:
        """Refuse, when a runtime opens, a policy the bundle cannot honour (a budget above its T_max)."""

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

    def check(self, t_max: int) -> None:
        if self.timesteps > t_max:
            raise UserError(f"fixed:{self.timesteps} exceeds the bundle's T_max {t_max}")

    def budgets(self, x: np.ndarray, t_max: int) -> np.ndarray:
        self.check(t_max)
        return np.full(len(x), self.timesteps, dtype=np.int64)

    def describe(self) -> str:
        return f"fixed:{self.timesteps}"


@dataclass(frozen=True)
class Confidence(ExitPolicy):
    """SEENN-I: stop as soon as the confidence is strictly above alpha, or at the cap (T_max by default).

    With a cap T_cap <= T_max the policy family contains every Fixed(T) point as well as plain
    SEENN-I (T_cap = T_max), so calibrating over (alpha, T_cap) can only improve on both.
    """

    alpha: float
    t_cap: int | None = None
    name = "confidence"
    threshold: float = field(init=False, repr=False)  # alpha as float32 (_threshold)

    def __post_init__(self) -> None:
        if self.t_cap is not None and self.t_cap < 1:
            raise UserError(f"confidence:A@T needs a cap T >= 1, got {self.t_cap}")
        object.__setattr__(self, "threshold", _threshold(self.alpha, "confidence:A"))  # frozen: set once, here

    def check(self, t_max: int) -> None:
        if self.t_cap is not None and self.t_cap > t_max:
            raise UserError(f"{self.describe()}: the cap {self.t_cap} exceeds the bundle's T_max {t_max}")

    def budgets(self, x: np.ndarray, t_max: int) -> np.ndarray:
        self.check(t_max)
        return np.full(len(x), t_max if self.t_cap is None else self.t_cap, dtype=np.int64)

    def exits(self, confidence: np.ndarray, steps: np.ndarray, budget: np.ndarray) -> np.ndarray:
        return (confidence > self.threshold) | (steps >= budget)

    def describe(self) -> str:
        return f"confidence:{self.alpha:g}" + ("" if self.t_cap is None else f"@{self.t_cap}")


@dataclass
class Policy(ExitPolicy):
    """SEENN-II: the policy network looks at each sample once and picks T from the candidates.

    It runs at admission, on the whole block of samples admitted together (one call per block).
    """

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


@dataclass
class PolicyConfidence(Policy):
    """The policy's T as a cap on the confidence exit: stop when the confidence passes alpha or at the policy's T.

    alpha -> 1 gives the plain policy exit; every sample stops no later than there, some earlier.
    """

    alpha: float = 0.0
    name = "policy+confidence"
    threshold: float = field(init=False, repr=False)  # alpha as float32 (_threshold)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.threshold = _threshold(self.alpha, "policy+confidence:A")

    def exits(self, confidence: np.ndarray, steps: np.ndarray, budget: np.ndarray) -> np.ndarray:
        return (confidence > self.threshold) | (steps >= budget)

    def describe(self) -> str:
        return f"policy+confidence:{self.alpha:g}"


EXIT_SYNTAX = ("fixed:T, confidence:ALPHA[@T_CAP], confidence[@T_CAP] (the bundle's alpha), policy or "
               "policy+confidence[:ALPHA]")


def parse_exit(text: str | None, manifest: Manifest, policy_executor: Executor | None = None) -> ExitPolicy:
    """An exit policy from its spelling (EXIT_SYNTAX); None: the bundle's default.

    'confidence:0.9@3' exits when the confidence passes 0.9 and after 3 steps at the latest;
    'confidence' takes the bundle's calibrated alpha and cap, 'confidence@3' its alpha with cap 3;
    'policy+confidence:0.9' exits when the confidence passes 0.9 and at the policy's T at the latest.
    """
    info = manifest.exit
    if text is None:
        if info.kind == "confidence" and info.alpha is not None:
            return Confidence(info.alpha, info.t_cap)
        if info.kind == "policy" and policy_executor is not None:
            return Policy(policy_executor, info.candidates)
        return Fixed(info.t_cap if info.kind == "fixed" and info.t_cap else manifest.timesteps)
    kind, _, arg = text.strip().partition(":")
    kind, at, cap_text = kind.partition("@")
    if at and kind != "confidence":
        raise UserError(f"--exit {text!r}: only the confidence exit takes a cap (confidence:ALPHA@T_CAP)")
    if at and arg:
        raise UserError(f"--exit {text!r}: write the cap after alpha, confidence:ALPHA@T_CAP")
    try:
        if kind == "fixed":
            return Fixed(int(arg) if arg else manifest.timesteps)
        if kind == "confidence":
            alpha_text, at_arg, cap_arg = arg.partition("@")
            cap = int(cap_arg or cap_text) if (at or at_arg) else None
            if alpha_text:
                return Confidence(float(alpha_text), cap)
            if info.alpha is None:
                raise UserError("the bundle has no calibrated alpha: give confidence:ALPHA or run `seenn-deploy calibrate`")
            return Confidence(info.alpha, cap if cap is not None else info.t_cap)
        if kind == PolicyConfidence.name or (kind == Policy.name and not arg):
            if policy_executor is None:
                raise UserError(f"--exit {kind} needs a bundle with policy.onnx (export a checkpoint that has a "
                                "policy: `seenn-deploy train-policy`)")
            if kind == Policy.name:
                return Policy(policy_executor, info.candidates)
            if not arg and info.alpha is None:
                raise UserError("the bundle has no calibrated alpha: give policy+confidence:ALPHA")
            return PolicyConfidence(policy_executor, info.candidates, float(arg) if arg else info.alpha)
    except ValueError:
        raise UserError(f"--exit {text!r}: a number in it is not valid; use {EXIT_SYNTAX}") from None
    raise UserError(f"--exit {text!r} is not one of {EXIT_SYNTAX}")
