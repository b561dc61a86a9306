"""Evaluation: pure metrics (metrics.py), held-out evaluation (evaluate.py), signal probe (probe.py)."""
