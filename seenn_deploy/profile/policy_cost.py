"""What the SEENN-II policy network costs: its MACs against one SNN timestep, its time, its share of the energy.

The policy is a plain ANN that runs once per sample, before the SNN's first step; every one of its
multiply-accumulates is a real MAC (4.6 pJ in the field's convention, profile/energy.py), whereas
most of the SNN's are spike-driven accumulates (0.9 pJ, and only where inputs spike). So the
policy's share of the energy is larger than its share of the MACs, and this module reports both.
The paper's reference point: ResNet-8 on ResNet-19 is 0.547 % of one timestep's MACs.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from seenn_deploy.profile.energy_costs import E_MAC_PJ

if TYPE_CHECKING:
    from seenn_deploy.runtime.exit import ExitPolicy

__all__ = ["PolicyCost", "bench_policy_cost", "policy_cost", "policy_cost_line", "snn_step_macs", "time_per_sample"]


@dataclass(frozen=True)
class PolicyCost:
    """Per sample. step_macs: the SNN's dense MACs of one timestep (every Conv2d / Linear, inputs all non-zero);
    snn_energy_pj: the SNN's estimated energy at the timesteps it used (None when not estimated)."""

    macs: int
    step_macs: int
    ms_per_sample: float | None = None
    snn_energy_pj: float | None = None

    @property
    def share_of_step(self) -> float:
        """The policy's MACs as a share of one SNN timestep's."""
        return self.macs / self.step_macs

    @property
    def energy_pj(self) -> float:
        return E_MAC_PJ * self.macs

    @property
    def share_of_energy(self) -> float | None:
        """The policy's share of the whole estimate (SNN at its average timesteps plus the policy)."""
        if self.snn_energy_pj is None:
            return None
        return self.energy_pj / (self.energy_pj + self.snn_energy_pj)

    def to_dict(self) -> dict[str, Any]:
        return {"macs": self.macs, "snn_step_macs": self.step_macs, "share_of_step": self.share_of_step,
                "ms_per_sample": self.ms_per_sample, "energy_uj": self.energy_pj * 1e-6,
                "snn_energy_uj": None if self.snn_energy_pj is None else self.snn_energy_pj * 1e-6,
                "share_of_energy": self.share_of_energy, "e_mac_pj": E_MAC_PJ}

    def line(self) -> str:
        parts = [(f"policy: {self.macs:,} MACs = {100 * self.share_of_step:.3f}% of one SNN timestep "
                  f"({self.step_macs:,})")]
        if self.ms_per_sample is not None:
            parts.append(f"{1e3 * self.ms_per_sample:.1f} us per sample")
        if self.share_of_energy is not None:
            parts.append(f"{self.energy_pj * 1e-6:.4f} uJ = {100 * self.share_of_energy:.2f}% of the estimated energy")
        return ", ".join(parts)


def policy_cost_line(cost: dict[str, Any]) -> str:
    """PolicyCost.line() from its to_dict(): what a report that kept the JSON prints."""
    snn = cost.get("snn_energy_uj")
    return PolicyCost(int(cost["macs"]), int(cost["snn_step_macs"]), cost.get("ms_per_sample"),
                      None if snn is None else 1e6 * snn).line()


def policy_cost(policy, input_shape: tuple[int, ...], step_macs: int, ms_per_sample: float | None = None,
                snn_energy_pj: float | None = None) -> PolicyCost:
    """The cost of `policy` (an nn.Module over [B, *input_shape]) against an SNN of `step_macs` MACs per step."""
    import torch

    from seenn_deploy.snn.macs import module_macs

    with _evaluating(policy):
        macs = module_macs(policy, torch.zeros((1, *input_shape)))
    return PolicyCost(macs, step_macs, ms_per_sample, snn_energy_pj)


def time_per_sample(run: Callable[[np.ndarray], Any], x: np.ndarray, batch: int, min_seconds: float = 0.5,
                    max_rounds: int = 50) -> float:
    """Seconds per sample of `run` on blocks of `batch` samples of x, cycling through x for at least
    `min_seconds` (after one warm-up block): the policy's time as the runtime calls it, once per admission."""
    blocks = [x[i: i + batch] for i in range(0, len(x), batch)] or [x]
    run(blocks[0])
    samples, started = 0, time.perf_counter()
    for _ in range(max_rounds):
        for block in blocks:
            run(block)
            samples += len(block)
        if time.perf_counter() - started >= min_seconds:
            break
    return (time.perf_counter() - started) / samples


def bench_policy_cost(runtime, x: np.ndarray, energy_estimate: dict | None,
                      exit_policy: ExitPolicy | None = None) -> tuple[dict | None, str | None]:
    """For `bench`: the cost of the bundle's policy graph (time measured on this runtime's executor, MACs from
    the source checkpoint's policy), or (None, why not). x: raw samples; energy_estimate: EnergyEstimate.to_dict();
    exit_policy: the exit that was measured (default: the runtime's). (None, None) unless that exit runs the
    policy (policy, policy+confidence): the runtime opens policy.onnx whenever the bundle has one, and a cost the
    run never paid would misstate its energy, and take half a second to time."""
    from seenn_deploy.runtime.exit import Policy

    if runtime.policy is None or not isinstance(runtime.exit if exit_policy is None else exit_policy, Policy):
        return None, None
    from seenn_deploy.runtime.manifest import X

    checkpoint = runtime.manifest.provenance.get("checkpoint")
    if not checkpoint or not Path(checkpoint).exists():
        return None, "the policy's MACs need the source checkpoint, which the bundle does not point to here"
    try:
        from seenn_deploy.snn.checkpoint import load_checkpoint, load_policy
    except ImportError:
        return None, "the policy's MACs need the torch extra"
    snn, config = load_checkpoint(Path(checkpoint))
    loaded = load_policy(Path(checkpoint), config)
    if loaded is None:
        return None, f"the source checkpoint {checkpoint} holds no policy any more"
    prepared = runtime.prepare(x[:256])  # timed only once the MACs are known to be countable
    seconds = time_per_sample(lambda block: runtime.policy.run({X: block}), prepared, runtime.batch)
    step = snn_step_macs(snn)
    energy = None if energy_estimate is None else 1e6 * energy_estimate["total_uj_per_sample"]
    cost = policy_cost(loaded[0], snn.input_spec.shape, step, 1e3 * seconds, energy)
    return cost.to_dict(), None


def snn_step_macs(snn) -> int:
    """Dense MACs of one SNN timestep per sample: every Conv2d / Linear as if all its inputs were non-zero."""
    import torch

    from seenn_deploy.snn.macs import module_macs

    with _evaluating(snn):
        return module_macs(snn, torch.zeros((1, *snn.input_spec.shape)), timesteps=1)


@contextmanager
def _evaluating(module) -> Iterator[None]:
    """`module` in eval mode (the graph as exported: dropout off, batch norm on its running statistics), its
    mode restored after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
