"""MRoPE positions of prompts with videos against transformers' Qwen3VLMoeModel.get_rope_index.

``get_rope_index`` is called unbound on a stand-in that carries the only state it reads
(``config.vision_config.spatial_merge_size``) and the model's own ``get_vision_position_ids``: no
model is built.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeModel

from shared.multimodal.chat_template import bundled_chat_template
from shared.multimodal.mrope import mrope_layout, mrope_positions
from shared.multimodal.prompt import PromptBuilder, VideoSlots

pytestmark = pytest.mark.unit

IMAGE, VIDEO, START, END = 151655, 151656, 151652, 151653
MERGE = 2

HF = SimpleNamespace(
    config=SimpleNamespace(vision_config=SimpleNamespace(spatial_merge_size=MERGE)),
    get_vision_position_ids=lambda *a, **k: Qwen3VLMoeModel.get_vision_position_ids(None, *a, **k),
)


def hf_rope(ids: list[int], images: list, videos: list) -> tuple[torch.Tensor, int]:
    input_ids = torch.tensor([ids])
    mm = (input_ids == IMAGE).int() + 2 * (input_ids == VIDEO).int()  # 0 text, 1 image, 2 video
    positions, delta = Qwen3VLMoeModel.get_rope_index(
        HF,
        input_ids,
        mm,
        image_grid_thw=torch.tensor(images) if images else None,
        video_grid_thw=torch.tensor(videos) if videos else None,
    )
    return positions[:, 0], int(delta)


@pytest.fixture(scope="module")
def builder(qwen_tokenizer) -> PromptBuilder:
    builder = PromptBuilder(qwen_tokenizer, bundled_chat_template(), merge_size=MERGE)
    assert (builder.image_token_id, builder.video_token_id) == (IMAGE, VIDEO)
    return builder


def video(t: int, h: int, w: int) -> VideoSlots:
    return VideoSlots((t, h, w), tuple(0.5 + 1.0 * k for k in range(t)))


V, I = {"type": "video"}, {"type": "image"}


def say(text: str) -> dict:
    return {"type": "text", "text": text}


# name -> (messages, image grids, videos)
PROMPTS = {
    "one video": ([{"role": "user", "content": [V, say("What happens?")]}], [], [video(3, 4, 6)]),
    "one-group video, wide": ([{"role": "user", "content": [say("Here:"), V]}], [], [video(1, 2, 12)]),
    "two videos": (
        [{"role": "user", "content": [V, say(" then "), V, say(" which is longer?")]}],
        [],
        [video(4, 6, 4), video(2, 10, 2)],
    ),
    "image, video, image": (
        [{"role": "user", "content": [say("Compare "), I, say(" with "), V, say(" and "), I]}],
        [(1, 4, 8), (1, 12, 6)],
        [video(3, 8, 4)],
    ),
    "multi-turn, video last": (
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [I, V, say("Same scene?")]},
            {"role": "assistant", "content": "Yes."},
            {"role": "user", "content": [say("And this one?"), V]},
        ],
        [(1, 6, 6)],
        [video(2, 4, 4), video(5, 2, 6)],
    ),
}


@pytest.mark.parametrize("name", list(PROMPTS))
def test_prompt_positions_match_get_rope_index(name: str, builder: PromptBuilder) -> None:
    messages, images, videos = PROMPTS[name]
    prompt = builder.build(messages, images, videos)
    ids = prompt.input_ids
    grids = [v.grid_thw for v in videos]

    kw = {"video_grid_thws": grids, "video_token_id": VIDEO}
    positions, delta = mrope_positions(ids, images, IMAGE, MERGE, **kw)
    ref_positions, ref_delta = hf_rope(ids, images, grids)

    assert positions.dtype == torch.long and positions.shape == (3, len(ids))
    assert torch.equal(positions, ref_positions)
    assert delta == ref_delta
    print(f"{name}: {len(ids)} tokens, delta {delta}")

    # One vision segment per image and per video group, at the spans the prompt recorded.
    layout = mrope_layout(torch.tensor(ids), torch.tensor(images or []), IMAGE, MERGE, **kw)
    vision = [(s.start, s.start + s.length) for s in layout.segments if s.grid is not None]
    groups = [span for spans in prompt.video_spans for span in spans]
    assert sorted(prompt.image_spans + groups) == vision
    # Any chunk of the prompt gives the same positions as slicing the whole.
    bounds = sorted(
        {0, 1, 9, len(ids) // 3, len(ids)} | {b for span in vision for b in span} | {s + 3 for s, _ in vision}
    )
    for start in bounds:
        for end in bounds:
            if start <= end <= len(ids):
                assert torch.equal(layout.positions(start, end), positions[:, start:end])


def test_raw_ids_adjacent_groups_and_images() -> None:
    # An image right after a video group and a video right after an image, with no text between
    # the vision_end and the next vision_start.
    ids = [5, START, *[VIDEO] * 6, END, 7, START, *[VIDEO] * 6, END, START, *[IMAGE] * 4, END]
    ids += [START, *[VIDEO] * 2, END, *range(100, 104)]
    images, videos = [(1, 4, 4)], [(2, 4, 6), (1, 2, 4)]
    positions, delta = mrope_positions(
        ids, images, IMAGE, MERGE, video_grid_thws=videos, video_token_id=VIDEO
    )
    ref_positions, ref_delta = hf_rope(ids, images, videos)
    assert torch.equal(positions, ref_positions) and delta == ref_delta


def test_images_only_calls_are_unchanged() -> None:
    # Without video_token_id video pads are ordinary text, as before videos were supported.
    ids = [1, IMAGE, IMAGE, IMAGE, IMAGE, 2, VIDEO, 3]
    positions, delta = mrope_positions(ids, [(1, 4, 4)], IMAGE, MERGE)
    assert delta == -2 and positions[:, -3:].tolist() == [[3, 4, 5]] * 3


def test_mismatches_are_errors() -> None:
    kw = {"video_token_id": VIDEO}
    with pytest.raises(ValueError, match="without a video_token_id"):
        mrope_layout([1, 2], [], IMAGE, MERGE, video_grid_thws=[(1, 2, 2)])
    with pytest.raises(ValueError, match="more video groups than the 2 temporal groups"):
        mrope_layout([1, VIDEO, 2, VIDEO, 3, VIDEO], [], IMAGE, MERGE, video_grid_thws=[(2, 2, 2)], **kw)
    with pytest.raises(ValueError, match="1 video groups but 3 temporal groups"):
        mrope_layout([1, VIDEO, 2], [], IMAGE, MERGE, video_grid_thws=[(1, 2, 2), (2, 2, 2)], **kw)
    with pytest.raises(ValueError, match="video 0 group 0 with grid \\(1, 4, 2\\) needs 2 consecutive"):
        mrope_layout([VIDEO, 1, VIDEO, 2], [], IMAGE, MERGE, video_grid_thws=[(2, 4, 2)], **kw)
    with pytest.raises(ValueError, match="video 1 group 0: grid \\(1, 6, 3\\) is not divisible"):
        mrope_layout([VIDEO] * 3, [], IMAGE, MERGE, video_grid_thws=[(1, 2, 2), (1, 6, 3)], **kw)
    with pytest.raises(ValueError, match="triples"):
        mrope_layout([VIDEO], [], IMAGE, MERGE, video_grid_thws=[(2, 2)], **kw)
