"""Multimodal front half of the pipeline, shared by router and encoder.

- ``image``: untrusted bytes -> RGB picture (validation, limits, transparency), content hash.
- ``vision_inputs``: picture -> patch rows + grid (Qwen3-VL preprocessing), token counts.
- ``chat_template`` / ``chat_template.jinja``: the Qwen3-VL chat template and its lookup.
- ``prompt``: messages + image grids + video slots -> prompt token ids, placeholders expanded.
- ``mrope``: prompt ids + image and video grids -> 3-axis rotary positions, decode delta.
"""

from shared.multimodal.chat_template import load_chat_template
from shared.multimodal.image import ImageError, decode_image, image_hash, image_size
from shared.multimodal.mrope import MRopeLayout, decode_positions, mrope_layout, mrope_positions
from shared.multimodal.prompt import ChatPrompt, PromptBuilder, VideoSlots, image_parts, video_parts
from shared.multimodal.vision_inputs import (
    ImageProcessorConfig,
    grid_thw_for_size,
    num_image_tokens,
    preprocess_image,
    smart_resize,
)

__all__ = [
    "ChatPrompt",
    "ImageError",
    "ImageProcessorConfig",
    "MRopeLayout",
    "PromptBuilder",
    "VideoSlots",
    "decode_image",
    "decode_positions",
    "grid_thw_for_size",
    "image_hash",
    "image_parts",
    "image_size",
    "load_chat_template",
    "mrope_layout",
    "mrope_positions",
    "num_image_tokens",
    "preprocess_image",
    "smart_resize",
    "video_parts",
]
