"""Benchmarks behind `statekv bench`: random-weight models at real shapes (make_model, shapes),
prompt speed (text) and per-frame video prefill (frames)."""
