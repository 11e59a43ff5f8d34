"""statekv: linear-time long-video VLM inference on ggml.

Example::

    import statekv
    m = statekv.Model("Qwen2.5-0.5B-Instruct-Q8_0.gguf", threads=4)
    logits = m.logits([9707, 11, 1879])           # (3, n_vocab) float32
    new_tokens = m.generate([9707, 11, 1879], max_tokens=16)
    print(m.info()["architecture"], statekv.backends())

Errors: a file statekv cannot run raises :class:`statekv.ModelError` (its message names the file,
the key or tensor, and what was expected); a bad argument raises :class:`ValueError`.
"""
from ._native import _core
from ._core import ModelError
from .model import Model, Session, backends, ggml_info
from .text.chat_template import ChatTemplate
from .video import Frame, VideoError, VideoReader
from .vlm import VLM, VideoChat, load, load_chat

__all__ = ["ChatTemplate", "Frame", "Model", "ModelError", "Session", "VLM", "VideoChat", "VideoError", "VideoReader",
           "backends", "ggml_info", "load", "load_chat"]
__version__ = "0.1.0"
