"""Benchmark harness pieces: latency statistics, power samplers, energy model."""
