"""Benchmarks, soak and fuzz harnesses (``python -m medstream.benchmarks.<name>``)."""
