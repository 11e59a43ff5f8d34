"""statekv: linear-time long-video VLM inference on ggml (placeholder; filled below)."""
from ._core import backends, ModelError  # noqa: F401
