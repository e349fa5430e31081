"""Calibration: timestep profiles, the exact exit-threshold sweep, AET, threshold selection, plots."""
