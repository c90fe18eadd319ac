"""Video prompts against transformers' Qwen3VLProcessor, with the tiny checkpoint's tokenizer and the
real Qwen3 one (only the real one merges a timestamp's "<" with the text before it, e.g. ":<").

The reference is ``Qwen3VLProcessor.__call__`` itself: its image processor, its
``replace_video_token`` (timestamps from its ``_calculate_timestamps``), its
``get_text_with_replacements`` and its tokenizer call. Only the video *pixel* processor is a stub
that hands back the grid and frame metadata of each video: ``Qwen3VLVideoProcessor`` needs
torchvision, which this project does not install, and no pixel enters the prompt text.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, Qwen3VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.video_utils import VideoMetadata

from shared.multimodal.chat_template import bundled_chat_template
from shared.multimodal.prompt import PromptBuilder, VideoSlots, image_parts, timestamp_text, video_parts
from shared.multimodal.vision_inputs import ImageProcessorConfig
from tests.multimodal.conftest import encode, noise_image

pytestmark = pytest.mark.unit

CFG = ImageProcessorConfig(min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 20)

# name -> (sampled frame indices, fps, grid (T, h, w) in patches); T = ceil(frames / 2)
VIDEOS: dict[str, tuple[list[int], float, tuple[int, int, int]]] = {
    "clip": ([0, 15, 30, 45, 60, 75], 30.0, (3, 4, 6)),
    "odd": ([0, 12, 24, 36, 48], 24.0, (3, 6, 4)),  # the last group repeats frame 48
    "late": ([3000, 3060, 3120, 3180], 29.97, (2, 2, 2)),  # one token per group
    "still": ([7], 2.0, (1, 8, 8)),
}
IMAGES = {
    name: encode(noise_image(w, h, seed=w), "PNG") for name, (w, h) in {"a": (64, 48), "b": (40, 130)}.items()
}


class StubVideoProcessor:
    """The grids and frame metadata Qwen3VLVideoProcessor would return for the queued videos."""

    merge_size = CFG.merge_size
    temporal_patch_size = 2

    def __init__(self) -> None:
        self.queue: list[str] = []

    def __call__(self, videos: Any, **kwargs: Any) -> dict[str, Any]:
        assert len(videos) == len(self.queue)
        return {
            "video_grid_thw": torch.tensor([VIDEOS[name][2] for name in self.queue]),
            "video_metadata": [
                VideoMetadata(
                    total_num_frames=len(VIDEOS[n][0]), fps=VIDEOS[n][1], frames_indices=VIDEOS[n][0]
                )
                for n in self.queue
            ],
        }


class StubVideoQwen3VLProcessor(Qwen3VLProcessor):
    """Qwen3VLProcessor built without its video processor slot (see the module docstring); the stub
    is set afterwards. Everything else is the parent's, untouched."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(
            image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs
        )
        self.video_processor = StubVideoProcessor()


@pytest.fixture(scope="module", params=["tiny", "qwen"])
def tokenizer(request: pytest.FixtureRequest):
    if request.param == "qwen":
        return request.getfixturevalue("qwen_tokenizer")
    ckpt = request.getfixturevalue("tiny_checkpoint")()
    return AutoTokenizer.from_pretrained(str(ckpt), local_files_only=True)


@pytest.fixture(scope="module")
def processor(tokenizer) -> StubVideoQwen3VLProcessor:
    return StubVideoQwen3VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(**CFG.to_hf_kwargs()),
        tokenizer=tokenizer,
        chat_template=bundled_chat_template(),
    )


@pytest.fixture(scope="module")
def builder(tokenizer) -> PromptBuilder:
    return PromptBuilder(tokenizer, bundled_chat_template(), merge_size=CFG.merge_size)


def slots(processor: Qwen3VLProcessor, name: str) -> VideoSlots:
    indices, fps, grid = VIDEOS[name]
    return VideoSlots(grid, tuple(processor._calculate_timestamps(list(indices), fps, 2)))


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def image(style: str, name: str) -> dict:
    if style == "hf":
        return {"type": "image", "image": Image.open(io.BytesIO(IMAGES[name]))}
    url = "data:image/png;base64," + base64.b64encode(IMAGES[name]).decode()
    return {"type": "image_url", "image_url": {"url": url}}


def video(style: str, name: str) -> dict:
    if style == "hf":
        return {"type": "video", "video": f"{name}.mp4"}
    return {"type": "video_url", "video_url": {"url": f"https://example.com/{name}.mp4"}}


def conversation(name: str, style: str) -> tuple[list[dict], list[str], list[str], dict]:
    """(messages, image names, video names, template kwargs), vision parts in the given style."""
    i, v = (lambda n: image(style, n)), (lambda n: video(style, n))
    tools = [{"type": "function", "function": {"name": "clip", "parameters": {"type": "object"}}}]
    match name:
        case "one video":
            return [{"role": "user", "content": [v("clip"), text("What happens?")]}], [], ["clip"], {}
        case "video after a colon":  # ":<" is one token of the real tokenizer
            msgs = [{"role": "user", "content": [text("Watch this:"), v("odd"), text(" Summarise.")]}]
            return msgs, [], ["odd"], {}
        case "image, video, image":
            content = [text("Compare "), i("a"), text(" with "), v("clip"), text(" and "), i("b")]
            return [{"role": "user", "content": content}], ["a", "b"], ["clip"], {}
        case "two videos with vision ids":  # "Video 1: <" merges " <"
            content = [v("late"), v("odd"), text("Which is longer?")]
            return [{"role": "user", "content": content}], [], ["late", "odd"], {"add_vision_id": True}
        case "multi-turn with a tool":
            msgs = [
                {"role": "system", "content": "You watch videos."},
                {"role": "user", "content": [v("clip"), text("What moves?")]},
                {"role": "assistant", "content": "A red car."},
                {"role": "user", "content": [text("And now? "), i("a"), v("still")]},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"type": "function", "function": {"name": "clip", "arguments": "{}"}}],
                },
                {"role": "tool", "content": [v("late"), text("clipped")]},
            ]
            return msgs, ["a"], ["clip", "still", "late"], {"tools": tools}
    raise KeyError(name)


NAMES = [
    "one video",
    "video after a colon",
    "image, video, image",
    "two videos with vision ids",
    "multi-turn with a tool",
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("style", ["hf", "openai"])
def test_matches_qwen3vl_processor(name: str, style: str, builder: PromptBuilder, processor) -> None:
    ours_msgs, image_names, video_names, kwargs = conversation(name, style)
    hf_msgs, _, _, _ = conversation(name, "hf")
    hf_text = processor.apply_chat_template(hf_msgs, tokenize=False, add_generation_prompt=True, **kwargs)
    assert builder.render(ours_msgs, **kwargs) == hf_text

    processor.video_processor.queue = video_names
    frames = [np.zeros((len(VIDEOS[n][0]), 2, 2, 3), np.uint8) for n in video_names]
    pictures = [Image.open(io.BytesIO(IMAGES[n])) for n in image_names]
    out = processor(text=[hf_text], images=pictures or None, videos=frames)
    image_grids = [tuple(g) for g in out["image_grid_thw"].tolist()] if pictures else []
    videos = [slots(processor, n) for n in video_names]

    prompt = builder.build(ours_msgs, image_grids, videos, **kwargs)

    assert prompt.input_ids == out["input_ids"][0]
    # The same as tokenizing the expanded text, which is HF's expanded text.
    assert builder.tokenizer(prompt.text, add_special_tokens=False)["input_ids"] == prompt.input_ids
    image_repl = [processor.replace_image_token(out, k) for k in range(len(pictures))]
    video_inputs = processor.video_processor(frames)
    video_repl = [processor.replace_video_token(video_inputs, k) for k in range(len(frames))]
    expanded, _ = processor.get_text_with_replacements([hf_text], image_repl, video_repl)
    assert prompt.text == expanded[0]
    # Spans cover exactly the tokens HF marks as image (1) and video (2), in order.
    mm = out["mm_token_type_ids"][0]
    assert [k for s, e in prompt.image_spans for k in range(s, e)] == [k for k, t in enumerate(mm) if t == 1]
    flat = [k for groups in prompt.video_spans for s, e in groups for k in range(s, e)]
    assert flat == [k for k, t in enumerate(mm) if t == 2]
    assert [len(groups) for groups in prompt.video_spans] == [v.grid_thw[0] for v in videos]
    assert prompt.video_grid_thws == [VIDEOS[n][2] for n in video_names]
    assert prompt.num_video_tokens == [t * h * w // 4 for t, h, w in prompt.video_grid_thws]
    for groups in prompt.video_spans:
        for s, e in groups:
            assert prompt.input_ids[s - 1] == builder.vision_start_token_id
            assert prompt.input_ids[e] == builder.vision_end_token_id
    print(f"{name} ({style}): {len(prompt.input_ids)} tokens, video spans {prompt.video_spans}")


def test_splicing_timestamp_ids_would_be_wrong(qwen_tokenizer) -> None:
    """Why the groups are spliced into the text before tokenizing: with the real tokenizer the first
    timestamp's "<" merges with the text before it, so its ids depend on that text."""
    builder = PromptBuilder(qwen_tokenizer, bundled_chat_template())
    msgs = [{"role": "user", "content": [text("Watch this:"), {"type": "video"}]}]
    prompt = builder.build(msgs, [], [VideoSlots((1, 2, 2), (0.5,))])
    tok = qwen_tokenizer
    rendered = tok(builder.render(msgs), add_special_tokens=False)["input_ids"]
    start = rendered.index(builder.vision_start_token_id)
    spliced = (
        rendered[:start] + tok("<0.5 seconds>", add_special_tokens=False)["input_ids"] + rendered[start:]
    )
    assert len(spliced) == len(prompt.input_ids) + 1  # one pad either way; the merge saves a token
    assert spliced != prompt.input_ids
    assert ":<" in tok.convert_ids_to_tokens(prompt.input_ids)


def test_timestamp_text_is_one_decimal(builder: PromptBuilder) -> None:
    assert [timestamp_text(t) for t in (0.25, 3, 100.04, 0.35)] == [
        "<0.2 seconds>",
        "<3.0 seconds>",
        "<100.0 seconds>",
        f"<{0.35:.1f} seconds>",
    ]
    msgs = [{"role": "user", "content": [{"type": "video"}]}]
    prompt = builder.build(msgs, [], [VideoSlots((2, 2, 4), (0.25, 3))])
    assert "<0.2 seconds><|vision_start|><|video_pad|><|video_pad|><|vision_end|><3.0 seconds>" in prompt.text
    assert prompt.video_spans[0][1][0] - prompt.video_spans[0][0][1] > 2  # timestamp text in between


def test_video_slots_are_checked_and_normalised() -> None:
    v = VideoSlots(torch.tensor([2, 4, 6]).tolist(), [np.float64(0.5), 1])  # type: ignore[arg-type]
    assert v.grid_thw == (2, 4, 6) and v.timestamps == (0.5, 1.0)
    assert all(type(x) is int for x in v.grid_thw) and all(type(x) is float for x in v.timestamps)
    for grid, stamps, error in [
        ((2, 4), (0.0, 1.0), "triple"),
        ((0, 4, 4), (), "empty axis"),
        ((2, 4, 4), (0.0,), "2 temporal groups but 1 timestamps"),
        ((1, 4, 4), (float("nan"),), "finite"),
        ((1, 4, 4), (-1.0,), "non-negative"),
    ]:
        with pytest.raises(ValueError, match=error):
            VideoSlots(grid, stamps)  # type: ignore[arg-type]


def test_video_parts_and_payloads() -> None:
    msgs = [
        {"role": "system", "content": "s"},
        {
            "role": "user",
            "content": [
                {"type": "video_url", "video_url": {"url": "u"}},
                {"type": "video", "video": "v"},
                {"video": ["frame0.png", "frame1.png"]},
                {"type": "image", "video": "both"},  # the template takes it as an image
                text("t"),
            ],
        },
        {"role": "tool", "content": [{"type": "video"}]},
    ]
    assert len(video_parts(msgs)) == 4 and len(image_parts(msgs)) == 1
    for role in ("system", "assistant"):
        with pytest.raises(ValueError, match="videos are only accepted in user and tool messages"):
            video_parts([{"role": role, "content": [{"type": "video_url", "video_url": {"url": "u"}}]}])


def test_payloads_never_reach_the_template(builder: PromptBuilder) -> None:
    bare = [{"role": "user", "content": [{"type": "video"}, text("x")]}]
    for part in ({"type": "video_url", "video_url": {"url": "{{ 7 * 7 }}"}}, {"video": "{{ 7 * 7 }}"}):
        msgs = [{"role": "user", "content": [part, text("x")]}]
        assert builder.render(msgs) == builder.render(bare)
        assert "<|video_pad|>" in builder.render(msgs)


def test_video_errors(builder: PromptBuilder) -> None:
    one = [{"role": "user", "content": [{"type": "video"}, text("hi")]}]
    v = VideoSlots((1, 4, 4), (0.0,))
    with pytest.raises(ValueError, match="1 video parts but 2 videos"):
        builder.build(one, [], [v, v])
    with pytest.raises(ValueError, match="1 video parts but 0 videos"):
        builder.build(one, [])
    with pytest.raises(ValueError, match="not divisible by merge_size 2"):
        builder.build(one, [], [VideoSlots((1, 4, 3), (0.0,))])
    sneaky = [{"role": "user", "content": [{"type": "video"}, text("a <|video_pad|> b")]}]
    with pytest.raises(ValueError, match="must not contain <\\|video_pad\\|>"):
        builder.build(sneaky, [], [v])
