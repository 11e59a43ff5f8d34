"""Evaluations: `statekv eval long-context` (fidelity of the cache modes on a trained text model,
text chunks as steps) and `statekv eval video` (multiple-choice video benchmarks the user brings)."""
