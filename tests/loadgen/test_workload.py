"""Distribution specs, configuration checks, synthetic images and videos, request bodies and records."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from shared.loadgen import LoadConfig
from shared.loadgen.cli import config_from_args, parse_slo
from shared.loadgen.client import RequestRecord
from shared.loadgen.dists import parse_dist, parse_size
from shared.loadgen.runner import _Sender
from shared.loadgen.workload import RequestSpec, Workload

pytestmark = pytest.mark.unit


def test_parse_dist_forms() -> None:
    rng = np.random.default_rng(0)
    assert parse_dist("3").sample(rng) == 3 and parse_dist(3).mean == 3
    r = parse_dist("10-40")
    draws = {r.sample(rng) for _ in range(500)}
    assert min(draws) == 10 and max(draws) == 40 and r.mean == 25
    w = parse_dist("0:0.2, 1:0.6, 3:0.2")
    assert w.values == (0, 1, 3) and w.weights == pytest.approx((0.2, 0.6, 0.2))
    assert w.mean == pytest.approx(1.2)
    assert parse_dist("1,2").weights == (0.5, 0.5)
    sizes = parse_dist("224x224:3,448x336:1", parse_size)
    assert sizes.values == ((224, 224), (448, 336)) and sizes.weights == (0.75, 0.25)
    for bad in ("", "5-2", "1:-1", "x", "-3"):
        with pytest.raises(ValueError):
            parse_dist(bad)
    with pytest.raises(ValueError):
        parse_dist("224", parse_size)


def test_config_checks_and_cli() -> None:
    cfg = config_from_args(["--request-rate", "1,inf", "--slo", "ttft:500", "tpot:50", "--images", "0:1,2:1"])
    assert cfg.mode == "request_rate" and cfg.levels == (1.0, float("inf"))
    assert cfg.slo == {"ttft": 500.0, "tpot": 50.0}
    assert LoadConfig(concurrency="1,4").levels == (1.0, 4.0) and LoadConfig().levels == (1.0,)
    for bad in (dict(concurrency=2, request_rate=1), dict(max_tokens="0-4"), dict(image_size="big"),
                dict(slo={"ttfb": 1}), dict(request_rate="0")):  # fmt: skip
        with pytest.raises(ValueError):
            LoadConfig(**bad)
    with pytest.raises(ValueError):
        parse_slo(["ttft=500"])


def _image_urls(specs: list[RequestSpec]) -> list[str]:
    return [
        p["image_url"]["url"] for s in specs for p in s.body["messages"][0]["content"] if "image_url" in p
    ]


def test_images_are_distinct_and_sized() -> None:
    cfg = LoadConfig(images="2", image_size="32x32:1,48x40:1", prompt_words="3-6", max_tokens="5")
    specs = Workload(cfg, "m").batch(20)
    urls = _image_urls(specs)
    assert len(urls) == 40 and len({hashlib.sha1(u.encode()).digest() for u in urls}) == 40
    sizes = {Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))).size for u in urls}
    assert sizes == {(32, 32), (48, 40)}
    body = specs[0].body
    assert body["stream"] and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 5 and body["temperature"] == 0.0 and "ignore_eos" not in body
    assert 3 <= len(body["messages"][0]["content"][-1]["text"].split()) <= 6
    # The same seed draws the same workload; another seed does not.
    assert _image_urls(Workload(cfg, "m").batch(2)) == urls[:4]
    assert not set(_image_urls(Workload(cfg, "m", seed=1).batch(2))) & set(urls)


def test_image_repeat_and_formats() -> None:
    cfg = LoadConfig(images="1", image_size="24x24", image_repeat=3, image_format="jpeg", ignore_eos=True)
    wl = Workload(cfg, "m")
    urls = _image_urls(wl.batch(24))
    assert urls[0].startswith("data:image/jpeg;base64,") and wl.images_made == 8
    assert sorted(urls.count(u) for u in set(urls)) == [3] * 8
    assert wl.batch(1)[0].body["ignore_eos"] is True
    no_image = Workload(LoadConfig(images="0", prompt_words="0"), "m").next()
    (part,) = no_image.body["messages"][0]["content"]
    assert part["type"] == "text" and no_image.prompt_words == 1  # never an empty message


def _video_urls(spec: RequestSpec) -> list[str]:
    return [p["video_url"]["url"] for p in spec.body["messages"][0]["content"] if p["type"] == "video_url"]


def test_videos_are_distinct_and_follow_the_images() -> None:
    cfg = LoadConfig(images="1", image_size="16x16", videos="0:1,2:1", video_frames=3, video_size="32x24")
    specs = Workload(cfg, "m").batch(12)
    assert {s.n_videos for s in specs} == {0, 2}
    for s in specs:
        types = [p["type"] for p in s.body["messages"][0]["content"]]
        assert types == ["image_url"] + ["video_url"] * s.n_videos + ["text"]
        assert len(_video_urls(s)) == s.n_videos
    urls = [u for s in specs for u in _video_urls(s)]
    assert all(u.startswith("data:video/mp4;base64,") for u in urls)
    assert len(set(urls)) == len(urls) == sum(s.n_videos for s in specs)
    with av.open(io.BytesIO(base64.b64decode(urls[0].split(",", 1)[1])), "r") as c:
        stream = c.streams.video[0]
        frames = list(c.decode(stream))
        assert (stream.width, stream.height, len(frames), stream.average_rate) == (32, 24, 3, 4)
    alone = LoadConfig(images="0", videos="1", video_frames=2, video_size="16x16", prompt_words="0")
    only_video = Workload(alone, "m").next()
    assert [p["type"] for p in only_video.body["messages"][0]["content"]] == ["video_url"]


def test_video_repeat_reuses_bytes() -> None:
    cfg = LoadConfig(images="0", videos="1", video_frames=2, video_size="16x16", video_repeat=3)
    wl = Workload(cfg, "m")
    specs = wl.batch(24)
    urls = [u for s in specs for u in _video_urls(s)]
    assert wl.videos_made == 8 and sorted(urls.count(u) for u in set(urls)) == [3] * 8
    # Every use of one video is the very same encoded string: encoded once, not per use.
    assert len({id(u) for u in urls}) == 8


@pytest.mark.parametrize(
    "bad",
    [dict(videos="-1"), dict(videos="x"), dict(video_frames=0), dict(video_size="224"),
     dict(video_size="0x10"), dict(video_fps=0), dict(video_fps=-2.0), dict(video_repeat=0)],
)  # fmt: skip
def test_video_config_errors(bad: dict) -> None:
    with pytest.raises(ValueError):
        LoadConfig(**bad)


def test_video_cli_flags() -> None:
    argv = ["--videos", "1:3,2:1", "--video-frames", "8", "--video-size", "64x48", "--video-fps", "2.5"]
    cfg = config_from_args([*argv, "--video-repeat", "2"])
    assert cfg.video_dist.values == (1, 2) and cfg.video_size_dist.values == ((64, 48),)
    assert (cfg.video_frames, cfg.video_fps, cfg.video_repeat) == (8, 2.5, 2)
    d = config_from_args([])
    assert (d.videos, d.video_frames, d.video_size, d.video_fps, d.video_repeat) == (
        "0",
        16,
        "224x224",
        4.0,
        1,
    )
    with pytest.raises(SystemExit):  # argparse's error: the message and exit status 2
        config_from_args(["--video-frames", "0"])


def test_records_carry_image_and_video_counts() -> None:
    cfg = LoadConfig(images="0:1,1:1", videos="1:1,2:1", video_frames=2, video_size="16x16", progress=False)
    specs = Workload(cfg, "m").batch(6)
    answer = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\ndata: [DONE]\n\n'

    async def go() -> list[RequestRecord]:
        transport = httpx.MockTransport(lambda req: httpx.Response(200, content=answer))
        async with httpx.AsyncClient(transport=transport) as client:
            sender = _Sender(client, cfg, {})
            records, _ = await sender.batch(specs, "concurrency", 2, np.random.default_rng(0), "t")
        return records

    records = asyncio.run(go())
    assert all(r.success for r in records)
    assert [(r.n_images, r.n_videos) for r in records] == [(s.n_images, s.n_videos) for s in specs]
    assert {r.n_videos for r in records} == {1, 2}
