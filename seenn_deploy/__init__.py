"""seenn-deploy: take spiking neural networks with temporal early exit to edge GPUs."""

__version__ = "0.1.0"
