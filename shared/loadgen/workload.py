"""The synthetic multimodal workload: distinct generated images and videos, random-word prompts,
request bodies.

Every image is drawn from its own random stream (background, shapes, noise) and carries its serial
number in its top-left pixels, so no two images of one ``Workload`` are equal and no image or
prefix cache can serve a request from an earlier one, unless ``image_repeat`` K > 1 asks for each
distinct image to be used K times (in a shuffled order, to measure what caching gains). Videos
(``video_synth.make_video``: MPEG-4 in MP4, a moving gradient under blocky noise) are seeded by the
workload's seed and their serial number, so they are distinct in the same way, and ``video_repeat``
reuses them the same way. Each distinct image or video is encoded once, into the data URL that
every use of it shares; a message holds its images, then its videos, then the text.
"""

from __future__ import annotations

import base64
import io
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from shared.loadgen.config import LoadConfig

# A fixed vocabulary: prompts are random words from it, so prompt length is the only text knob.
_WORDS = (
    "image picture photo colour shape circle square triangle line edge corner centre left right top "
    "bottom small large bright dark red green blue yellow orange purple white black grey pattern noise "
    "texture border object count describe explain compare where what which how many near far above "
    "below inside outside between around several single pair group first second third last visible "
    "hidden sharp soft smooth rough round straight curved flat tall wide narrow thin thick background "
    "foreground detail region area scene view frame layout position size order number question answer "
    "briefly carefully exactly roughly mostly partly clearly simple complex random regular repeated"
)
VOCAB = tuple(_WORDS.split())

_STAMP_BITS = 32  # serial number stamped into the first row as black/white pixels
_REPEAT_BATCH = 8  # with repeats: distinct items made at a time, whose uses are then shuffled


@dataclass
class RequestSpec:
    """One chat request ready to send: its JSON body and the knobs it was drawn with."""

    body: dict
    n_images: int
    prompt_words: int
    max_tokens: int
    n_videos: int = 0


def synth_image(serial: int, size: tuple[int, int], seed: int) -> Image.Image:
    """A noisy background with a few random shapes; ``serial`` also written into the pixels."""
    w, h = size
    rng = np.random.default_rng([seed, serial])
    base = rng.integers(0, 256, 3)
    pixels = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)  # [H, W, 3]
    img = Image.fromarray(pixels)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        x0, x1 = sorted(rng.integers(0, w, 2))
        y0, y1 = sorted(rng.integers(0, h, 2))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = ("ellipse", "rectangle", "triangle")[int(rng.integers(3))]
        if shape == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape == "rectangle":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=fill)
    stamp = np.array([(serial >> b) & 1 for b in range(min(_STAMP_BITS, w))], dtype=np.uint8) * 255
    out = np.asarray(img).copy()
    out[0, : len(stamp)] = stamp[:, None]
    return Image.fromarray(out)


def data_url(img: Image.Image, fmt: str) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG" if fmt == "png" else "JPEG", **({"quality": 90} if fmt == "jpeg" else {}))
    return f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode()


def video_data_url(data: bytes) -> str:
    return "data:video/mp4;base64," + base64.b64encode(data).decode()


class Workload:
    """Draws requests one after another from ``cfg``'s distributions; reproducible from ``seed``."""

    def __init__(self, cfg: LoadConfig, model: str, seed: int | None = None) -> None:
        self.cfg, self.model = cfg, model
        self.seed = cfg.seed if seed is None else seed
        self.rng = np.random.default_rng([self.seed, 1])
        self.next_serial = 0
        self.pending: deque[str] = deque()  # image URLs still to be used (image_repeat > 1)
        self.pending_videos: deque[str] = deque()  # video URLs still to be used (video_repeat > 1)
        self.images_made = self.videos_made = 0
        self.n_images, self.sizes = cfg.image_dist, cfg.size_dist
        self.n_videos, self.video_sizes = cfg.video_dist, cfg.video_size_dist
        self.words, self.tokens = cfg.words_dist, cfg.tokens_dist

    def _new_image(self) -> str:
        size = self.sizes.sample(self.rng)
        url = data_url(synth_image(self.next_serial, size, self.seed), self.cfg.image_format)
        self.next_serial += 1
        self.images_made += 1
        return url

    def _new_video(self) -> str:
        # On first use: importing shared.multimodal loads torch, which image-only runs never need.
        from shared.multimodal.video_synth import make_video

        cfg = self.cfg
        width, height = self.video_sizes.sample(self.rng)
        seed = self.seed * 2**32 + self.videos_made  # video_synth draws every frame's noise from it
        self.videos_made += 1
        return video_data_url(make_video(cfg.video_frames, width, height, fps=cfg.video_fps, seed=seed))

    def _reuse(self, pending: deque[str], uses: int, make: Callable[[], str]) -> str:
        """A fresh item, or with ``uses`` K > 1 the next of K shuffled uses of each of a few fresh ones."""
        if uses == 1:
            return make()
        if not pending:
            fresh = [make() for _ in range(_REPEAT_BATCH)]
            all_uses = [u for u in fresh for _ in range(uses)]
            pending.extend(all_uses[i] for i in self.rng.permutation(len(all_uses)))
        return pending.popleft()

    def _image(self) -> str:
        return self._reuse(self.pending, self.cfg.image_repeat, self._new_image)

    def _video(self) -> str:
        return self._reuse(self.pending_videos, self.cfg.video_repeat, self._new_video)

    def prompt(self, n_words: int) -> str:
        return " ".join(VOCAB[i] for i in self.rng.integers(0, len(VOCAB), n_words))

    def next(self) -> RequestSpec:
        cfg = self.cfg
        n_images = self.n_images.sample(self.rng)
        n_videos = self.n_videos.sample(self.rng)  # a single-valued spec draws nothing from rng
        n_words = self.words.sample(self.rng)
        n_words = max(n_words, 1) if n_images + n_videos == 0 else n_words  # never an empty message
        max_tokens = self.tokens.sample(self.rng)
        parts: list[dict] = [
            {"type": "image_url", "image_url": {"url": self._image()}} for _ in range(n_images)
        ]
        parts += [{"type": "video_url", "video_url": {"url": self._video()}} for _ in range(n_videos)]
        if n_words:
            parts.append({"type": "text", "text": self.prompt(n_words)})
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": parts}],
            "max_tokens": max_tokens,
            "temperature": cfg.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if cfg.ignore_eos:
            body["ignore_eos"] = True  # an extension that vLLM, SGLang and this router accept
        return RequestSpec(body, n_images, n_words, max_tokens, n_videos)

    def batch(self, n: int) -> list[RequestSpec]:
        return [self.next() for _ in range(n)]
