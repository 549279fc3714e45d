"""Evaluation: :mod:`.baselines` (what a model must beat) and :mod:`.evaluate` (held-out
metrics, calibration, reports and the quality gates)."""
