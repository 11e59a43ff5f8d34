"""Gemma 3 (a SigLIP tower pooled 4 x 4 with Gemma's projector, the ``gemma3`` decoder with
sliding-window layers): one folder for the family.

``preprocess`` (frames -> pixels), ``prompt`` (wrap tokens, chat template, prompt builder; a video
is a sequence of timestamped images), ``layout`` (the chat's step layout, with each frame's image
tokens as one bidirectional block, and the benchmarks' step geometry), ``convert`` (the text and
mmproj converters), ``random_model`` (random-weight towers). The decoder and the tower are
``cpp/src/models/gemma3.cpp`` and ``cpp/src/models/gemma3_vision.cpp``.
"""
from ..base import Family
from .preprocess import IMAGE_MEAN, IMAGE_SIZE, IMAGE_STD, preprocess_frames
from .prompt import (CHAT_TEMPLATE, END_OF_IMAGE, IMAGE_SOFT_TOKEN, START_OF_IMAGE, TOKENS_PER_FRAME,
                     VideoPromptBuilder, timestamp_text)

__all__ = ["FAMILY", "IMAGE_MEAN", "IMAGE_STD", "IMAGE_SIZE", "preprocess_frames", "CHAT_TEMPLATE",
           "START_OF_IMAGE", "END_OF_IMAGE", "IMAGE_SOFT_TOKEN", "TOKENS_PER_FRAME", "VideoPromptBuilder",
           "timestamp_text"]

FAMILY = Family(
    name="gemma3",
    projectors=("gemma3",),
    decoders=("gemma3",),
    hf_architecture="Gemma3ForConditionalGeneration",
    towers=("siglip-so400m-896",),
    package=__name__,
)
