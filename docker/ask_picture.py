"""Ask a running router about a picture of a red circle in the top-left corner; print the answer.

    python docker/ask_picture.py http://127.0.0.1:8000 [--expect red]

Standalone (Pillow and the standard library): the same kind of picture as tests/demo_pictures.py
draws (a 320x240 light background, a red disc in the top-left corner), sent as a base64 data URL
to the OpenAI-compatible POST /v1/chat/completions. ROUTER_API_KEYS-style keys: the first key of
$EPD_API_KEYS is sent as a Bearer token when set. Exit status 1 when the answer lacks --expect.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import urllib.request

from PIL import Image, ImageDraw


def red_circle_png(width: int = 320, height: int = 240) -> bytes:
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    left, right = (238, 238, 232), (250, 248, 240)  # a light left-to-right ramp
    for x in range(width):
        t = x / (width - 1)
        colour = tuple(round(a + (b - a) * t) for a, b in zip(left, right, strict=True))
        draw.line([(x, 0), (x, height - 1)], fill=colour)
    cx, cy, r = 0.25 * width, 0.25 * height, 0.16 * min(width, height)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(215, 35, 35))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def call(url: str, body: dict | None = None, timeout: float = 120.0) -> dict:
    headers = {"Content-Type": "application/json"}
    key = os.environ.get("EPD_API_KEYS", "").split(",")[0].strip()
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.load(resp)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base_url", help="the router, e.g. http://127.0.0.1:8000")
    p.add_argument("--question", default="What colour is the circle?")
    p.add_argument("--expect", default="red", help="word the answer must contain (case-insensitive)")
    args = p.parse_args()
    base = args.base_url.rstrip("/")
    model = call(f"{base}/v1/models")["data"][0]["id"]
    url = "data:image/png;base64," + base64.b64encode(red_circle_png()).decode()
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": args.question}]
    body = {
        "model": model,
        "messages": [{"role": "user", "content": parts}],
        "max_tokens": 16,
        "temperature": 0,
    }
    answer = call(f"{base}/v1/chat/completions", body)["choices"][0]["message"]["content"]
    print(f"model: {model}")
    print(f"question: {args.question} (320x240 picture, red circle top left)")
    print(f"answer: {answer}")
    if args.expect.lower() not in answer.lower():
        print(f"FAIL: the answer does not contain {args.expect!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
