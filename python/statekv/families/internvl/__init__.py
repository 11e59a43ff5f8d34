"""InternVL3 (InternViT + pixel-shuffle MLP projector, a Qwen2 decoder): one folder for the family.

``preprocess`` (frames -> pixels), ``prompt`` (wrap tokens, chat template, prompt builder),
``layout`` (the chat's step layout and the benchmarks' step geometry), ``convert`` (the mmproj
writer and the text checkpoint's mapping), ``random_model`` (random-weight towers). The
preprocessing and prompt functions are importable from here.
"""
from ..base import Family
from .preprocess import IMAGE_MEAN, IMAGE_STD, preprocess_frames
from .prompt import (CHAT_TEMPLATE, IMG_CONTEXT, IMG_END, IMG_START, TOKENS_PER_FRAME, VideoPrompt,
                     VideoPromptBuilder, build_video_prompt, video_frames_text, video_prompt_text)

__all__ = ["FAMILY", "IMAGE_MEAN", "IMAGE_STD", "preprocess_frames", "CHAT_TEMPLATE", "IMG_START", "IMG_END",
           "IMG_CONTEXT", "TOKENS_PER_FRAME", "VideoPrompt", "VideoPromptBuilder", "build_video_prompt",
           "video_frames_text", "video_prompt_text"]

FAMILY = Family(
    name="internvl",
    projectors=("internvl",),
    decoders=("qwen2",),
    hf_architecture="InternVLForConditionalGeneration",
    towers=("internvit-300m", "internvit-6b"),
    package=__name__,
)
