"""Training (TET) and per-timestep evaluation."""
