"""Measurement: timing, the float64 gate, shape sets, problem operands, baselines and `compare`."""
