"""A JSON-friendly description of the neurons a model uses, recorded in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from seenn_deploy.errors import UserError
from seenn_deploy.snn.neurons import IF, LIF, SpikingNeuron
from seenn_deploy.snn.surrogate import Surrogate, Tanh, Triangle, check_firing

NEURON_KINDS: dict[str, type[SpikingNeuron]] = {"lif": LIF, "if": IF}
SURROGATES: dict[str, type] = {"triangle": Triangle, "tanh": Tanh}


@dataclass(frozen=True)
class NeuronConfig:
    """kind 'lif' (tau, hard reset) or 'if' (soft reset, v_init e.g. 0.5 for converted models).

    `surrogate_param` is the triangle's gamma or the tanh family's b.
    """

    kind: str = "lif"
    tau: float = 0.5
    v_threshold: float = 1.0
    v_init: float = 0.0
    firing: str = ">="
    surrogate: str = "triangle"
    surrogate_param: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in NEURON_KINDS:
            raise UserError(f"neuron kind {self.kind!r} is unknown; known: {', '.join(NEURON_KINDS)}")
        if self.surrogate not in SURROGATES:
            raise UserError(f"surrogate {self.surrogate!r} is unknown; known: {', '.join(SURROGATES)}")
        check_firing(self.firing)

    def make_surrogate(self) -> Surrogate:
        return SURROGATES[self.surrogate](self.surrogate_param)

    def build(self) -> SpikingNeuron:
        common = dict(
            v_threshold=self.v_threshold,
            v_init=self.v_init,
            firing=self.firing,
            surrogate=self.make_surrogate(),
        )
        if self.kind == "lif":
            return LIF(tau=self.tau, **common)
        return NEURON_KINDS[self.kind](**common)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NeuronConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UserError(f"neuron config has unknown keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)
