"""A JSON-friendly description of the neurons a model uses, recorded in every checkpoint.

The same record builds the ANN that a converted SNN starts from: kind 'qcfs' or 'relu' puts that
activation wherever the architecture has a neuron, so an ANN and its converted SNN share one
module tree (and one set of weight names).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from torch import nn

from seenn_deploy.errors import UserError
from seenn_deploy.snn.neurons import IF, LIF, SpikingNeuron
from seenn_deploy.snn.qcfs import QCFS
from seenn_deploy.snn.surrogate import Surrogate, Tanh, Triangle, check_firing

NEURON_KINDS: dict[str, type[SpikingNeuron]] = {"lif": LIF, "if": IF}
ACTIVATION_KINDS: dict[str, type[nn.Module]] = {"qcfs": QCFS, "relu": nn.ReLU}
SURROGATES: dict[str, type] = {"triangle": Triangle, "tanh": Tanh}
# Fields added for conversion: left out of to_dict at their defaults (but for QCFS), so records written before
# them compare equal.
_OMITTED_AT_DEFAULT = {"levels": 4, "scale_spikes": False}


@dataclass(frozen=True)
class NeuronConfig:
    """kind 'lif' (tau, hard reset), 'if' (soft reset, v_init e.g. 0.5 for converted models), or an ANN
    activation: 'qcfs' (`levels` steps up to a learnt threshold that starts at `v_threshold`) or 'relu'.

    `surrogate_param` is the triangle's gamma or the tanh family's b. `scale_spikes`: a spike carries
    the value v_threshold instead of 1, so the next layer reads the activation scale of the ANN a
    model was converted from.
    """

    kind: str = "lif"
    tau: float = 0.5
    v_threshold: float = 1.0
    v_init: float = 0.0
    firing: str = ">="
    surrogate: str = "triangle"
    surrogate_param: float = 1.0
    levels: int = 4
    scale_spikes: bool = False

    def __post_init__(self) -> None:
        if self.kind not in NEURON_KINDS and self.kind not in ACTIVATION_KINDS:
            known = ", ".join([*NEURON_KINDS, *ACTIVATION_KINDS])
            raise UserError(f"neuron kind {self.kind!r} is unknown; known: {known}")
        if self.surrogate not in SURROGATES:
            raise UserError(f"surrogate {self.surrogate!r} is unknown; known: {', '.join(SURROGATES)}")
        check_firing(self.firing)

    @property
    def spiking(self) -> bool:
        """False for the ANN activations (qcfs, relu)."""
        return self.kind in NEURON_KINDS

    def make_surrogate(self) -> Surrogate:
        return SURROGATES[self.surrogate](self.surrogate_param)

    def build(self) -> nn.Module:
        """A SpikingNeuron, or for 'qcfs' / 'relu' the stateless activation."""
        if self.kind == "qcfs":
            return QCFS(self.levels, self.v_threshold)
        if self.kind == "relu":
            return nn.ReLU()
        common = dict(
            v_threshold=self.v_threshold,
            v_init=self.v_init,
            firing=self.firing,
            surrogate=self.make_surrogate(),
            scale_spikes=self.scale_spikes,
        )
        if self.kind == "lif":
            return LIF(tau=self.tau, **common)
        return NEURON_KINDS[self.kind](**common)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.kind == "qcfs":
            return d
        return {k: v for k, v in d.items() if k not in _OMITTED_AT_DEFAULT or v != _OMITTED_AT_DEFAULT[k]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NeuronConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UserError(f"neuron config has unknown keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)
