"""Estimated energy, the field's convention: 4.6 pJ per MAC of the analog-input layer, 0.9 pJ per SOP.

E = 4.6 pJ x MACs(analog-input layers) + 0.9 pJ x SOPs(spike-driven layers), with
SOPs = input rate x T x MACs: a spike-driven layer accumulates its weights only where its
input is non-zero. The rate of a layer is the mean of its input over the data and timesteps:
the firing rate for binary spikes, the mean spike count where spikes were pooled or added
(SEW) — what an event-driven accelerator processes per weight. Analog layers are the
encoder's (the first conv + BN): they run once per sample when the encoder is split off (what
a seenn-deploy bundle does), or every timestep in the classic accounting (`encoder_runs_once=False`).
T is the average number of timesteps actually used (early exit), not T_max.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from seenn_deploy.profile.energy_costs import E_MAC_PJ, E_SOP_PJ
from seenn_deploy.snn.macs import layer_macs
from seenn_deploy.snn.model import SpikingModel


@dataclass
class LayerEnergy:
    name: str
    kind: str  # "analog" (MAC) or "spike" (SOP)
    macs_per_step: int  # per sample, per timestep
    rate: float  # mean input; 1.0 for analog layers
    ops_per_sample: float  # MACs or SOPs per sample over the timesteps used
    energy_pj: float


@dataclass
class EnergyEstimate:
    layers: list[LayerEnergy]
    avg_timesteps: float
    encoder_runs_once: bool

    @property
    def total_uj(self) -> float:
        return sum(layer.energy_pj for layer in self.layers) * 1e-6

    def at(self, avg_timesteps: float) -> EnergyEstimate:
        """The same layers at another average of timesteps (spike layers scale with it; the analog ones
        with it only where the encoder runs every step)."""
        layers = []
        for layer in self.layers:
            runs = avg_timesteps if layer.kind == "spike" or not self.encoder_runs_once else 1.0
            ops = layer.rate * layer.macs_per_step * runs
            layers.append(LayerEnergy(layer.name, layer.kind, layer.macs_per_step, layer.rate, ops,
                                      (E_SOP_PJ if layer.kind == "spike" else E_MAC_PJ) * ops))
        return EnergyEstimate(layers, float(avg_timesteps), self.encoder_runs_once)

    def to_dict(self) -> dict:
        return {"layers": [asdict(layer) for layer in self.layers], "avg_timesteps": self.avg_timesteps,
                "encoder_runs_once": self.encoder_runs_once, "total_uj_per_sample": self.total_uj,
                "e_mac_pj": E_MAC_PJ, "e_sop_pj": E_SOP_PJ}

    def text(self) -> str:
        lines = [f"  {'layer':<28} {'kind':<6} {'MACs/step':>11} {'rate':>7} {'ops/sample':>12} {'uJ':>9}"]
        for layer in self.layers:
            lines.append(f"  {layer.name:<28} {layer.kind:<6} {layer.macs_per_step:>11,} {layer.rate:>7.4f} "
                         f"{layer.ops_per_sample:>12,.0f} {layer.energy_pj * 1e-6:>9.4f}")
        lines.append(f"  total {self.total_uj:.4f} uJ per sample at {self.avg_timesteps:.3f} average timesteps")
        return "\n".join(lines)


@torch.no_grad()
def estimate_energy(model: SpikingModel, x: torch.Tensor, timesteps: int, avg_timesteps: float | None = None,
                    encoder_runs_once: bool = True, batch_size: int = 256) -> EnergyEstimate:
    """Measure each Conv2d / Linear's input rate on x ([N, C, H, W], normalised) over `timesteps` steps."""
    model = model.eval()
    analog = {id(m) for m in model.encoder.modules()}
    stats: dict[str, list] = {}  # name -> [macs per step, input sum, input elements]
    names = {m: n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}

    def hook(module, inputs, out):
        entry = stats.setdefault(names[module], [0, 0.0, 0])
        entry[0] = layer_macs(module, out)
        entry[1] += float(inputs[0].double().sum())
        entry[2] += inputs[0].numel()

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        for start in range(0, len(x), batch_size):
            model(x[start : start + batch_size], timesteps=timesteps)
    finally:
        for h in handles:
            h.remove()
    steps = float(avg_timesteps if avg_timesteps is not None else timesteps)
    layers = []
    for module, name in names.items():
        macs, total, count = stats[name]
        if id(module) in analog:
            runs = 1.0 if encoder_runs_once else steps
            layers.append(LayerEnergy(name, "analog", macs, 1.0, macs * runs, E_MAC_PJ * macs * runs))
        else:
            rate = total / count if count else 0.0
            ops = rate * steps * macs
            layers.append(LayerEnergy(name, "spike", macs, rate, ops, E_SOP_PJ * ops))
    return EnergyEstimate(layers, steps, encoder_runs_once)

