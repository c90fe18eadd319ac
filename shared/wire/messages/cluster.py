"""Cluster membership: who serves, in what state, under what load; and which routers are alive.

* every worker -> each router (PUSH to the router's inbox, ``--report-to``): ``LoadReport`` every
  ``--report-interval-s``. The first report registers the worker with that router; the reports
  are its heartbeat (a router drops a worker it has not heard from for its heartbeat timeout, and
  fails over what the worker held); ``state`` says whether it takes new work: ``draining``
  (SIGTERM: finishing what it holds, send it nothing new), ``leaving`` (the last report, sent
  as it exits: forget it now).
* router -> every worker it sends work to (on the channel it sends requests by): ``RouterHeartbeat``
  every interval. A worker that has heard from a router and then stops hearing from it takes the
  router as gone and drops that router's requests (their answers have nobody to go to).
"""

from __future__ import annotations

import enum
import re

from shared.wire.messages.common import ADDRESS, SOURCE, Stage
from shared.wire.schema import message, rule

WORKER_STAGES = (Stage.ENCODER, Stage.PREFILL, Stage.DECODE)


class WorkerState(enum.StrEnum):
    SERVING = "serving"
    DRAINING = "draining"  # takes no new work, finishing what it holds
    LEAVING = "leaving"  # done: the last report before it exits


@message("load_report")
class LoadReport:
    """A worker's identity, state and load, as of ``time`` (its wall clock, informational)."""

    source: str = rule(max_len=SOURCE)
    kind: Stage
    address: str = rule(pattern=ADDRESS)  # where work goes: encoder/prefill requests, decode KV
    inbox: str = rule(max_len=256, default="")  # prefill: embeddings from encoders; decode: aborts
    http: str = rule(max_len=256, default="")  # health and metrics, http://HOST:PORT (informational)
    state: WorkerState = WorkerState.SERVING
    running: int = rule(ge=0, default=0)  # requests (encoder: images) being computed
    queued: int = rule(ge=0, default=0)  # waiting here (decode: also importing or waiting for room)
    free_blocks: int = rule(ge=0, default=0)  # KV blocks (prefill, decode)
    total_blocks: int = rule(ge=0, default=0)
    cache_bytes: int = rule(ge=0, default=0)  # encoder: bytes held by the embedding cache
    time: float = rule(ge=0, default=0.0)

    def validate(self) -> None:
        if self.kind not in WORKER_STAGES:
            raise ValueError(f"kind must be a worker stage, not {self.kind.value}")
        if self.inbox and not re.fullmatch(ADDRESS, self.inbox):
            raise ValueError(f"inbox {self.inbox!r} is not a ZMQ address")
        if self.kind is not Stage.ENCODER and not self.inbox:
            raise ValueError(f"a {self.kind.value} worker reports its inbox")
        if self.http and not re.fullmatch(r"https?://[^\s/]+", self.http):
            raise ValueError(f"http {self.http!r} is not http://HOST:PORT")


@message("router_heartbeat")
class RouterHeartbeat:
    inbox: str = rule(pattern=ADDRESS)  # the router's reply_to: the requests it owns name it
    time: float = rule(ge=0)
