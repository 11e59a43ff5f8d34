"""Eagle 2.5 (NVIDIA's Eagle2.5-VL: a SigLIP tower cut at ``select_layer``, pixel shuffle, an MLP
projector, a Qwen2.5 decoder): one folder for the family.

``preprocess`` (frames -> one 448 tile each), ``prompt`` (NVlabs' video prompt: timestamped
frames), ``layout`` (the chat's step layout and the benchmarks' step geometry), ``convert`` (the
checkpoint -> ``qwen2`` text GGUF + ``eagle2_5`` mmproj, docs/eagle2_5-gguf.md), ``random_model``
(random towers). The tower is ``cpp/src/models/eagle2_5_vision.cpp``.
"""
from ..base import Family
from .preprocess import IMAGE_MEAN, IMAGE_SIZE, IMAGE_STD, preprocess_frames
from .prompt import (CHAT_TEMPLATE, DEFAULT_SYSTEM, IMG_CONTEXT, IMG_END, IMG_START, TOKENS_PER_FRAME,
                     VideoPromptBuilder, frame_text)

__all__ = ["FAMILY", "IMAGE_MEAN", "IMAGE_STD", "IMAGE_SIZE", "preprocess_frames", "CHAT_TEMPLATE", "DEFAULT_SYSTEM",
           "IMG_START", "IMG_END", "IMG_CONTEXT", "TOKENS_PER_FRAME", "VideoPromptBuilder", "frame_text"]

FAMILY = Family(
    name="eagle2_5",
    projectors=("eagle2_5",),
    decoders=("qwen2",),
    hf_architecture="Eagle2_5_VLForConditionalGeneration",
    towers=("siglip-so400m-448",),
    package=__name__,
)
