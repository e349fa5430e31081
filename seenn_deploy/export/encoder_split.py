"""Whether to run the first conv + BN once per sample (`encoder.onnx`) or inside every step.

The split saves the encoder's MACs on every step after the first, and costs bytes: the step
graph then reads the encoder's output (C_out x H x W floats) every step instead of the raw
input (C_in x H x W), and each admission runs one more graph. For a 3x3 first conv that is
about 9 C_in / 4 MACs saved per extra byte read (2.4 for the Fashion-MNIST CNN, 8.3 for the
CIFAR-10 one, 6.9 for ResNet-19), far below what a GPU computes per byte it reads, and under
early exit (average T near 1) there is little left to save. `auto` splits only where the
encoder does at least SPLIT_MACS_PER_BYTE MACs per extra byte read per step, which no image
model of the zoo reaches; event inputs are never split (a new frame every step). The
measurements behind the default are in the README (`benchmarks/encoder_split.py`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from seenn_deploy.errors import UserError
from seenn_deploy.snn.macs import module_macs
from seenn_deploy.snn.model import SpikingModel

MODES = ("auto", "on", "off")
# Roughly the compute-to-bandwidth balance of the devices we target (Jetson Orin: ~200 GB/s and
# a few TFLOPS of FP16 convolution): below this, reading the encoded tensor every step costs more
# than recomputing the encoder.
SPLIT_MACS_PER_BYTE = 16.0
FLOAT_BYTES = 4


@dataclass(frozen=True)
class SplitDecision:
    """What `auto` weighed, recorded in the manifest's provenance."""

    mode: str
    split: bool
    encoder_macs: int  # per sample
    extra_bytes_per_step: int  # per sample: encoded minus raw input
    threshold_macs_per_byte: float = SPLIT_MACS_PER_BYTE

    def to_dict(self) -> dict:
        return asdict(self)


def decide_split(model: SpikingModel, mode: str, event: bool) -> SplitDecision:
    """The split for `mode` ("auto", "on", "off"); event models are never split."""
    if mode not in MODES:
        raise UserError(f"--encoder-split {mode!r} is not one of {', '.join(MODES)}")
    if event:
        if mode == "on":
            raise UserError("--encoder-split on needs static inputs: event models take a new frame every step")
        return SplitDecision(mode, False, 0, 0)
    sample = torch.zeros(1, *model.input_spec.shape)
    macs = module_macs(model.encoder, sample)
    with torch.no_grad():
        encoded = model.encoder(sample)
    extra = (encoded[0].numel() - sample[0].numel()) * FLOAT_BYTES
    if mode != "auto":
        return SplitDecision(mode, mode == "on", macs, extra)
    ratio = math.inf if extra <= 0 else macs / extra
    return SplitDecision(mode, ratio >= SPLIT_MACS_PER_BYTE, macs, extra)
