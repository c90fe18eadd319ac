"""Distribution specs, configuration checks, synthetic images and request bodies."""

from __future__ import annotations

import base64
import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from shared.loadgen import LoadConfig
from shared.loadgen.cli import config_from_args, parse_slo
from shared.loadgen.dists import parse_dist, parse_size
from shared.loadgen.workload import Workload

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


def _image_urls(specs) -> list[str]:
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
