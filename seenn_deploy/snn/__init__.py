"""The PyTorch side: neurons, explicit state, the model contract, model zoo, checkpoints."""
