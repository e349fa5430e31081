"""The model zoo: spiking architectures and the SEENN-II policy network, built by name."""

from seenn_deploy.snn.zoo.registry import create_model, get_entry, list_models, register_model

__all__ = ["create_model", "get_entry", "list_models", "register_model"]
