"""Locust users that stream multimodal chat completions, built by ``shared.loadgen``'s workload.

    .venv/bin/python -m locust -f bench/locustfile.py --host http://127.0.0.1:8000 \\
        --headless -u 16 -r 4 -t 2m --only-summary

Each request appears twice in Locust's statistics: ``chat e2e`` (type POST; response time = the
whole streamed answer, failures = HTTP errors, error events, empty answers) and ``chat ttft``
(type SSE; time to the first content chunk, successful requests only). The metrics of the
closed-loop ``python -m shared.loadgen`` (TPOT, ITL, goodput) are not reproduced here.

Options, from environment variables (the workload knobs take the same specs as the CLI):

    LOADGEN_API_ROOT      path of the API under --host (default /v1)
    LOADGEN_MODEL         model name (default: the first one GET {root}/models lists)
    LOADGEN_API_KEY       sent as 'Authorization: Bearer KEY'
    LOADGEN_TIMEOUT       seconds per request (default 600)
    LOADGEN_IMAGES        images per request (default 1; e.g. 0:0.2,1:0.6,3:0.2)
    LOADGEN_IMAGE_SIZE    WxH or weighted list (default 224x224)
    LOADGEN_IMAGE_FORMAT  png or jpeg (default png)
    LOADGEN_IMAGE_REPEAT  uses of each distinct image (default 1: every image distinct)
    LOADGEN_VIDEOS        synthetic MP4 videos per request, after the images (default 0)
    LOADGEN_VIDEO_FRAMES  frames per video (default 16)
    LOADGEN_VIDEO_SIZE    WxH or weighted list (default 224x224)
    LOADGEN_VIDEO_FPS     the video files' frame rate (default 4)
    LOADGEN_VIDEO_REPEAT  uses of each distinct video (default 1: every video distinct)
    LOADGEN_PROMPT_WORDS  random words per prompt (default 20; e.g. 10-40)
    LOADGEN_MAX_TOKENS    output length cap (default 32; e.g. 16-64)
    LOADGEN_IGNORE_EOS    1 / true: send ignore_eos (default off)
    LOADGEN_TEMPERATURE   sampling temperature (default 0)
    LOADGEN_SEED          workload seed (default: random per process, so that the processes of a
                          distributed run never send the same image)
    LOADGEN_WAIT_S        think time between a user's requests in seconds (default 0)
"""

from __future__ import annotations

import os
import secrets
import time

from locust import FastHttpUser, constant, task

from shared.loadgen.config import LoadConfig
from shared.loadgen.sse import parse_line
from shared.loadgen.workload import Workload


def _env(name: str, default: str) -> str:
    return os.environ.get(f"LOADGEN_{name}", default)


API_ROOT = _env("API_ROOT", "/v1").rstrip("/")
API_KEY = _env("API_KEY", "")
CONFIG = LoadConfig(
    images=_env("IMAGES", "1"),
    image_size=_env("IMAGE_SIZE", "224x224"),
    image_format=_env("IMAGE_FORMAT", "png"),
    image_repeat=int(_env("IMAGE_REPEAT", "1")),
    videos=_env("VIDEOS", "0"),
    video_frames=int(_env("VIDEO_FRAMES", "16")),
    video_size=_env("VIDEO_SIZE", "224x224"),
    video_fps=float(_env("VIDEO_FPS", "4")),
    video_repeat=int(_env("VIDEO_REPEAT", "1")),
    prompt_words=_env("PROMPT_WORDS", "20"),
    max_tokens=_env("MAX_TOKENS", "32"),
    ignore_eos=_env("IGNORE_EOS", "0").lower() in ("1", "true", "yes"),
    temperature=float(_env("TEMPERATURE", "0")),
    seed=int(_env("SEED", str(secrets.randbits(31)))),
    timeout=float(_env("TIMEOUT", "600")),
)
_workload: Workload | None = None  # one per process: users share it, so every image stays distinct


class ChatUser(FastHttpUser):
    wait_time = constant(float(_env("WAIT_S", "0")))
    network_timeout = CONFIG.timeout
    connection_timeout = CONFIG.timeout

    def on_start(self) -> None:
        global _workload
        self.headers = {"Authorization": f"Bearer {API_KEY}"} if API_KEY else {}
        if _workload is None:
            model = _env("MODEL", "") or self._first_model()
            _workload = _workload or Workload(CONFIG, model)  # another user may have won the race

    def _first_model(self) -> str:
        with self.client.get(f"{API_ROOT}/models", headers=self.headers, name="models") as resp:
            return resp.json()["data"][0]["id"]

    @task
    def chat(self) -> None:
        assert _workload is not None
        spec = _workload.next()
        start = time.perf_counter()
        ttft, error = None, None
        with self.client.post(
            f"{API_ROOT}/chat/completions", json=spec.body, headers=self.headers, name="chat e2e",
            stream=True, catch_response=True,
        ) as resp:  # fmt: skip
            if getattr(resp, "error", None) is not None or resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
                return
            while line := resp.stream.readline(b"\n"):  # returns each line as soon as it arrives
                chunk = parse_line(line)
                if chunk is None:
                    continue
                if chunk.done:
                    break
                if chunk.error is not None:
                    error = chunk.error
                    break
                if chunk.content and ttft is None:
                    ttft = time.perf_counter() - start
            resp.request_meta["response_time"] = (time.perf_counter() - start) * 1000
            if error is None and ttft is None:
                error = "the stream ended without any content"
            if error is not None:
                resp.failure(error)
            else:
                resp.success()
        if ttft is not None and error is None:
            self.environment.events.request.fire(
                request_type="SSE", name="chat ttft", response_time=ttft * 1000, response_length=0,
                exception=None, context={},
            )  # fmt: skip
