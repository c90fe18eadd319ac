"""Request migration: a decode worker killed (or frozen) while its streams run; each stream goes on
from another decode worker where it stopped, with the text an undisturbed run gives.

Real processes on loopback, the bundled demo model (trained: decisive logits, so recomputing the
streamed tokens' KV in a prefill forward picks the same tokens): one encoder, two prefill and two
decode workers. The same requests run undisturbed, then with the decode worker holding most of
them SIGKILLed, then SIGSTOPped past the router's heartbeat timeout (and resumed: its stale tokens
are dropped and its blocks freed by the router's abort). Greedy and seeded sampling alike.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from functools import partial
from pathlib import Path

import httpx
import pytest

from bench.elastic import JSON, Scenario, counter, free_port, known_workers, worker
from shared.supervisor import ServiceSpec, Supervisor
from tests.cluster import wait_for
from tests.demo_pictures import data_url, shape_png

pytestmark = pytest.mark.cluster

HEARTBEAT_TIMEOUT_S = 1.5
BOUND_S = 5.0  # issue 17: a lost worker is noticed and its work re-sent within 5 s
SHAPES = [("circle", "red", "top left"), ("square", "blue", "bottom right"), ("star", "green", "centre")]


def bodies() -> list[dict]:
    out = []
    for i in range(8):
        kind, colour, region = SHAPES[i % len(SHAPES)]
        parts: list[dict] = [
            {"type": "text", "text": ["What is in the image?", f"Where is the {kind}?"][i % 2]}
        ]
        if i % 4 != 3:
            parts.insert(
                0, {"type": "image_url", "image_url": {"url": data_url(shape_png(kind, colour, region))}}
            )
        sampling = {"temperature": 0} if i % 3 else {"temperature": 0.8, "seed": 100 + i}
        out.append({"model": "demo", "messages": [{"role": "user", "content": parts}], "max_tokens": 48,
                    "ignore_eos": True, "stream": True, **sampling})  # fmt: skip
    return out


class Stream:
    def __init__(self) -> None:
        self.text, self.tokens, self.error, self.done, self.seconds = "", 0, "", False, 0.0


async def stream(client: httpx.AsyncClient, url: str, body: dict, out: Stream) -> None:
    start = time.monotonic()
    async with client.stream("POST", url, content=json.dumps(body), headers=JSON) as resp:
        async for line in resp.aiter_lines():
            if line == "data: [DONE]":
                out.done = True
            elif line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    out.error = chunk["error"]["message"]
                for choice in chunk.get("choices", []):
                    if piece := choice["delta"].get("content"):
                        out.text += piece
                        out.tokens += 1
    out.seconds = time.monotonic() - start


def holder_of_most(http: str, decodes: dict[str, str]) -> str:
    """The decode worker (child name) that holds most of the router's requests now."""
    snap = httpx.get(f"{http}/debug/requests", timeout=5).json()
    held = Counter(r["decode"] for r in snap["requests"])
    return decodes[held.most_common(1)[0][0]]


def pool_free(http: str) -> bool:
    return counter(http, "decode_free_blocks") == counter(http, "decode_total_blocks")


def registered(http: str, kv: str) -> bool:
    return kv in known_workers(http)


def test_streams_survive_a_killed_and_a_frozen_decode_worker(tmp_path: Path) -> None:
    inbox = f"tcp://127.0.0.1:{free_port()}"
    sc = Scenario(decode_flags=("--no-compile-decode",))

    def dec(name: str) -> ServiceSpec:
        return worker(
            sc, name, "services.decode", [inbox], "--port", "0", "--kv-port", "0", "--http-port", "0"
        )

    def pre(name: str) -> ServiceSpec:
        return worker(
            sc, name, "services.prefill", [inbox], "--port", "0", "--inbox-port", "0", "--http-port", "0"
        )

    router = ServiceSpec("router", "router", (
        "--port", "0", "--inbox-port", inbox.rsplit(":", 1)[1], "--heartbeat-timeout-s", str(HEARTBEAT_TIMEOUT_S),
    ))  # fmt: skip
    sup = Supervisor([
        worker(sc, "encoder-0", "services.encoder", [inbox], "--port", "0", "--http-port", "0"),
        pre("prefill-0"), pre("prefill-1"), dec("decode-0"), dec("decode-1"), router,
    ], tmp_path)  # fmt: skip
    ready = sup.start(timeout=600)
    http = ready["router"]["http"]
    url = f"{http}/v1/chat/completions"
    reqs = bodies()

    def info(name: str) -> dict:
        got = sup.children[name].info
        assert got is not None
        return got

    async def run_all(disrupt: str = "") -> tuple[list[Stream], str]:
        outs = [Stream() for _ in reqs]
        async with httpx.AsyncClient(timeout=120) as client:
            tasks = [asyncio.create_task(stream(client, url, b, o)) for b, o in zip(reqs, outs, strict=True)]
            victim = ""
            if disrupt:
                deadline = time.monotonic() + 60
                while sum(o.tokens >= 2 for o in outs) < len(outs) // 2 and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                decodes = {info(n)["kv"]: n for n in sup.children if n.startswith("decode")}
                victim = holder_of_most(http, decodes)
                pid = sup.children[victim].proc.pid
                os.kill(pid, signal.SIGKILL if disrupt == "kill" else signal.SIGSTOP)
                if disrupt == "freeze":
                    await asyncio.sleep(2 * HEARTBEAT_TIMEOUT_S)
                    os.kill(pid, signal.SIGCONT)
            await asyncio.gather(*tasks)
        return outs, victim

    try:
        calm, _ = asyncio.run(run_all())
        assert all(o.done and not o.error for o in calm), [o.error for o in calm]
        for disrupt in ("kill", "freeze"):
            before = counter(http, "router_migrations_total")
            outs, victim = asyncio.run(run_all(disrupt))
            migrated = counter(http, "router_migrations_total") - before
            print(f"\n{disrupt} {victim}: {migrated:.0f} migrations; E2E max {max(o.seconds for o in outs):.2f} s "
                  f"(undisturbed {max(o.seconds for o in calm):.2f} s)")  # fmt: skip
            assert migrated >= 1  # streams were cut mid-answer (else this proves nothing)
            assert all(o.done and not o.error for o in outs), [o.error for o in outs]
            assert [o.text for o in outs] == [o.text for o in calm]
            assert max(o.seconds for o in outs) <= max(o.seconds for o in calm) + BOUND_S
            if disrupt == "kill":
                sup.drain(victim, timeout=5)
                fresh = sup.add(dec(f"{victim}-b"))  # back to two decode workers
                assert wait_for(partial(registered, http, fresh["kv"]), 30)
            else:  # the frozen worker woke up: the router's aborts free what it held
                assert wait_for(partial(pool_free, info(victim)["http"]), 30)
    finally:
        sup.stop(timeout=30)
