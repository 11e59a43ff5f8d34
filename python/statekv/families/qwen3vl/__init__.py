"""Qwen3-VL (a ViT with learned positions, DeepStack mergers, the ``qwen3vl`` M-RoPE decoder): one
folder for the family.

``preprocess`` (frame sampling and sizes, frames -> pixels), ``prompt`` (wrap tokens, chat
template, prompt builder, 3-axis positions), ``layout`` (the chat's step layout and the
benchmarks' step geometry), ``convert`` (the mmproj writer and the text checkpoint's mapping),
``random_model`` (random-weight towers). The preprocessing and prompt functions are importable
from here.
"""
from ..base import Family
from .preprocess import (FPS, IMAGE_MEAN, IMAGE_STD, MAX_FRAMES, MAX_PIXELS, MERGE_SIZE, MIN_FRAMES, MIN_PIXELS,
                         PATCH_SIZE, TEMPORAL_PATCH_SIZE, frame_timestamps, preprocess_frames, sample_frame_indices,
                         smart_resize, target_size)
from .prompt import (CHAT_TEMPLATE, VIDEO_PAD, VISION_END, VISION_START, Step, VideoPrompt, VideoPromptBuilder,
                     build_video_prompt, merged_grid, step_positions, text_positions, timestamp_text,
                     video_prompt_text)

__all__ = [
    "FAMILY", "IMAGE_MEAN", "IMAGE_STD", "PATCH_SIZE", "MERGE_SIZE", "TEMPORAL_PATCH_SIZE", "MIN_PIXELS",
    "MAX_PIXELS", "FPS", "MIN_FRAMES", "MAX_FRAMES", "CHAT_TEMPLATE", "VISION_START", "VISION_END", "VIDEO_PAD",
    "smart_resize", "target_size", "sample_frame_indices", "frame_timestamps", "preprocess_frames", "merged_grid",
    "timestamp_text", "text_positions", "step_positions", "Step", "VideoPrompt", "VideoPromptBuilder",
    "build_video_prompt", "video_prompt_text",
]

FAMILY = Family(
    name="qwen3vl",
    projectors=("qwen3vl_merger",),
    decoders=("qwen3vl",),
    hf_architecture="Qwen3VLForConditionalGeneration",
    towers=("qwen3-vl-2b", "qwen3-vl-4b", "qwen3-vl-8b"),
    package=__name__,
)
