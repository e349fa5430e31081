"""What a converted model changes in its architecture, applied by `create_model` to any zoo model.

Two create_model kwargs, recorded in the converted checkpoint's config so that every later
command rebuilds the same module tree:

* `fold_bn=True`: each BatchNorm2d that directly follows a Conv2d is folded into it (the conv
  gains a bias, the BN becomes an Identity, so weight names keep their positions);
* `neurons={qualified name: {NeuronConfig field: value}}`: per-neuron settings over the model's
  `neuron` config, e.g. each layer's threshold and initial membrane from its ANN activation.

The converter calls the same `fold_batch_norm` on the trained ANN, with its real statistics.
"""

from __future__ import annotations

import itertools
from dataclasses import fields, replace
from typing import Any

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from seenn_deploy.errors import UserError
from seenn_deploy.snn.neurons import SpikingNeuron
from seenn_deploy.snn.zoo.common import as_neuron_config


def conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Module, str, nn.Conv2d, str, nn.BatchNorm2d]]:
    """(parent, conv's name, conv, BN's name, BN) for each BatchNorm2d directly after a Conv2d in its container."""
    pairs = []
    for parent in model.modules():
        children = list(parent.named_children())
        for (name, conv), (bn_name, bn) in itertools.pairwise(children):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                pairs.append((parent, name, conv, bn_name, bn))
    return pairs


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """In place: conv(x) then eval-mode BN becomes one conv with a bias (torch's fuse_conv_bn_eval). Returns `model`.

    W' = W * g per output channel,  b' = beta + (b - mean) * g,  g = gamma / sqrt(var + eps).
    """
    for parent, name, conv, bn_name, bn in conv_bn_pairs(model):
        setattr(parent, name, fuse_conv_bn_eval(conv.eval(), bn.eval()))
        setattr(parent, bn_name, nn.Identity())
    left = [name for name, m in model.named_modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))]
    if left:
        raise UserError(f"batch norm {left[0]} does not follow a Conv2d, so it cannot be folded: conversion takes "
                        "the zoo's conv + BN layers only")
    return model


def override_neurons(model: nn.Module, neuron: Any, overrides: dict[str, dict[str, Any]]) -> nn.Module:
    """In place: the neuron at each qualified name rebuilt from `neuron` (the model's config) with that name's fields."""
    base = as_neuron_config(neuron)
    known = {f.name for f in fields(base)}
    for name, changes in overrides.items():
        try:
            current = model.get_submodule(name)
        except AttributeError:
            current = None
        if not isinstance(current, SpikingNeuron):
            raise UserError(f"config names neuron {name!r}, which this model does not have: the checkpoint's "
                            "config.json does not match its architecture")
        unknown = set(changes) - known
        if unknown:
            raise UserError(f"neuron {name!r} sets unknown fields {sorted(unknown)}; known: {sorted(known)}")
        model.set_submodule(name, replace(base, **changes).build())
    return model
