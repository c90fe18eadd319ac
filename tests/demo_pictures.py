"""Pictures the bundled demo model (shared/assets/demo) knows how to talk about, as PNG bytes."""

from __future__ import annotations

import base64
import io

from tools.demo_scenes import COLOURS, REGIONS, Scene, Shape, render


def shape_png(kind: str = "circle", colour: str = "red", region: str = "top left", size=(320, 240)) -> bytes:
    w, h = size
    fx, fy = REGIONS[region]
    shape = Shape(kind, colour, region, fx * w, fy * h, 0.16 * min(w, h), 0.0, COLOURS[colour])
    scene = Scene(w, h, ((238, 238, 232), (250, 248, 240), "x", 0.0), (shape,))
    buf = io.BytesIO()
    render(scene).save(buf, format="PNG")
    return buf.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def ask_red_circle(base_url: str) -> str:
    """Ask the served model (``base_url`` ends in /v1) the colour of a red circle, greedily, with the
    official openai client; the answer's text."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    model = client.models.list().data[0].id
    parts = [
        {"type": "image_url", "image_url": {"url": data_url(shape_png("circle", "red", "top left"))}},
        {"type": "text", "text": "What colour is the circle?"},
    ]
    out = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": parts}], max_tokens=16, temperature=0
    )
    return out.choices[0].message.content or ""
