"""Video conversations over HTTP and transformers' answer to the same conversation: the
reference the cluster's and the colocated server's video tests compare with."""

from __future__ import annotations

import base64

import openai
import torch

from shared.models.config import load_config
from shared.multimodal.image import decode_image
from shared.multimodal.prompt import PromptBuilder, VideoSlots
from shared.multimodal.video import (
    VideoLimits,
    VideoProcessorConfig,
    decode_frame_list,
    decode_video,
    plan_video,
    preprocess_video,
    probe_frames,
    probe_video,
)
from shared.multimodal.video_synth import make_frame_list, make_video
from shared.multimodal.vision_inputs import ImageProcessorConfig, preprocess_image
from tests.demo_pictures import data_url
from tests.encoder.conftest import png

MAX_TOKENS = 32
TEXT = {"type": "text", "text": "What happens?"}


def video_part(data: bytes, mime: str = "video/mp4") -> dict:
    return {
        "type": "video_url",
        "video_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"},
    }


def frames_part(frames: list[bytes], fps: float) -> dict:
    url = "data:video/jpeg;base64," + ",".join(base64.b64encode(f).decode() for f in frames)
    return {"type": "video_url", "video_url": {"url": url, "fps": fps}}


def image_part(data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(data)}}


class Reference:
    """transformers' answer to the same conversation: our prompt ids (checked against transformers'
    processor in tests/multimodal) and our pixels (checked against its video processor)."""

    def __init__(self, ckpt, hf) -> None:
        self.ckpt, self.hf, self.cfg = ckpt, hf, load_config(ckpt)
        self.builder = PromptBuilder.from_checkpoint(ckpt)
        self.images = ImageProcessorConfig.from_checkpoint(ckpt)
        self.videos = VideoProcessorConfig.from_checkpoint(ckpt)

    def run(
        self, items: list[tuple[str, object]], fps: float | None = None
    ) -> tuple[list[int], torch.Tensor, int]:
        """items: ("image", png) / ("video", mp4) / ("frames", (stills, fps)) in prompt order.
        Returns (tokens, logits [steps, V], prompt length)."""
        content, grids, pix, slots, vpix, vgrids = [TEXT], [], [], [], [], []
        for kind, payload in items:
            if kind == "image":
                p, g = preprocess_image(decode_image(payload), self.images)
                content.append({"type": "image"})
                pix.append(p)
                grids.append(g)
                continue
            if kind == "video":
                plan = plan_video(probe_video(payload), self.videos, fps=fps)
                frames = decode_video(payload, plan, VideoLimits())
            else:
                stills, src_fps = payload
                plan = plan_video(probe_frames(stills, src_fps, VideoLimits()), self.videos, fps=fps)
                frames = decode_frame_list(stills, plan)
            content.append({"type": "video"})
            vpix.append(preprocess_video(frames, plan, self.videos))
            vgrids.append(plan.grid_thw)
            slots.append(VideoSlots(plan.grid_thw, plan.timestamps))
        chat = self.builder.build([{"role": "user", "content": content}], grids, slots)
        ids = torch.tensor(chat.input_ids)[None]
        mm = torch.zeros_like(ids)
        mm[ids == self.cfg.image_token_id] = 1
        mm[ids == self.cfg.video_token_id] = 2
        kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": mm}
        if pix:
            kwargs |= {"pixel_values": torch.cat(pix), "image_grid_thw": torch.tensor(grids)}
        if vpix:
            kwargs |= {"pixel_values_videos": torch.cat(vpix), "video_grid_thw": torch.tensor(vgrids)}
        with torch.inference_mode():
            out = self.hf.generate(
                **kwargs, max_new_tokens=MAX_TOKENS, do_sample=False, output_logits=True,
                return_dict_in_generate=True,
            )  # fmt: skip
        tokens = out.sequences[0, ids.shape[1] :].tolist()
        return tokens, torch.stack([lg[0] for lg in out.logits]).float(), ids.shape[1]


def assert_matches(out, tokens: list[int], logits: torch.Tensor, n_prompt: int, ref: Reference) -> None:
    assert out.usage.prompt_tokens == n_prompt
    assert out.usage.completion_tokens == len(tokens)  # both stop at the same end of sequence
    text = ref.builder.tokenizer.decode(tokens, skip_special_tokens=True)
    assert out.choices[0].message.content == text
    hf_lp = torch.log_softmax(logits, dim=-1)
    worst = 0.0
    for step, entry in enumerate(out.choices[0].logprobs.content):
        ours = torch.tensor([t.logprob for t in entry.top_logprobs])
        theirs = hf_lp[step].topk(len(ours)).values
        worst = max(worst, float((ours - theirs).abs().max()))
    print(f"\nmax |logprob - transformers| over {len(tokens)} steps x top-20: {worst:.2e} (tolerance 1e-4)")
    assert worst <= 1e-4


VIDEO_A = make_video(frames=9, width=96, height=64, fps=4.0, seed=1)  # 2.25 s: 4 sampled frames at 2 fps
VIDEO_B = make_video(frames=12, width=64, height=96, fps=6.0, seed=2)
STILLS = make_frame_list(frames=6, width=64, height=64, seed=3)
CONVERSATIONS = [
    [("video", VIDEO_A)],
    [("image", png(96, 64, seed=7)), ("video", VIDEO_B), ("image", png(64, 96, seed=8))],
    [("video", VIDEO_A), ("frames", (STILLS, 3.0))],
]
CONVERSATION_IDS = ["1 video", "image video image", "2 videos (file and frames)"]


def parts_of(items: list[tuple[str, object]]) -> list[dict]:
    parts = []
    for kind, payload in items:
        if kind == "image":
            parts.append(image_part(payload))  # type: ignore[arg-type]
        elif kind == "video":
            parts.append(video_part(payload))  # type: ignore[arg-type]
        else:
            parts.append(frames_part(*payload))  # type: ignore[misc]
    return parts


def ask(client: openai.OpenAI, model: str, parts: list[dict], **extra):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": [TEXT, *parts]}], max_tokens=MAX_TOKENS,
        temperature=0, logprobs=True, top_logprobs=20, extra_body=extra,
    )  # fmt: skip
