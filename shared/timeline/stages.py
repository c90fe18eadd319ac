"""The stages of a request's timeline: every name a service stamps, its owner, and what it covers.

This is the one place stage names are fixed. The wire (``StageStamp.stage``), the Prometheus
``stage`` label (``router_stage_latency_seconds`` and each worker's ``<service>_stage_latency_seconds``),
the OpenTelemetry span names, the ``timeline`` field of responses and the Grafana dashboard all use
these values.

A *waiting* stage overlaps the stages it waits for (prefill waits for embeddings while encoders
compute them); it is reported, but the critical path goes through what it waited for.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Service(enum.StrEnum):
    ROUTER = "router"
    ENCODER = "encoder"
    PREFILL = "prefill"
    DECODE = "decode"
    COLOCATED = "colocated"  # the single-process baseline (``epd up --colocated``)


class StageName(enum.StrEnum):
    PREPROCESS = "preprocess"  # router: HTTP body -> prompt ids, images fetched, decoded, sized
    ADMISSION = "admission"  # router: waiting for an admission slot and a worker, until dispatched
    ENCODE_QUEUE = "encode_queue"  # encoder: request received -> its image's vision batch starts
    VISION = "vision"  # encoder (or colocated): vision forward of the batch, result sent
    EMBEDDING_WAIT = "embedding_wait"  # prefill: request received -> its last embedding arrived
    PREFILL_QUEUE = "prefill_queue"  # prefill (or colocated): ready -> first chunk scheduled
    PREFILL = "prefill"  # prefill (or colocated): first chunk -> first token sampled
    KV_WAIT = "kv_wait"  # decode: reservation received -> granted (waiting for room)
    KV_TRANSFER = "kv_transfer"  # decode: granted -> the last KV piece landed (import finished)
    DECODE_QUEUE = "decode_queue"  # decode: KV in -> first decode step (waiting for a batch slot)
    DECODE = "decode"  # decode (or colocated): first decode step -> last token
    GAP = "gap"  # router: time on the critical path no stage accounts for (queues, transit)


@dataclass(frozen=True)
class StageInfo:
    owners: tuple[Service, ...]
    waiting: bool  # overlaps what it waits for: never on the critical path
    help: str


STAGES: dict[StageName, StageInfo] = {
    StageName.PREPROCESS: StageInfo(
        (Service.ROUTER,), False, "request parsing, image fetch and decode, chat template, tokens"
    ),
    StageName.ADMISSION: StageInfo((Service.ROUTER,), False, "waiting for a slot and dispatch"),
    StageName.ENCODE_QUEUE: StageInfo((Service.ENCODER,), False, "waiting for an encoder batch"),
    StageName.VISION: StageInfo((Service.ENCODER, Service.COLOCATED), False, "vision forward"),
    StageName.EMBEDDING_WAIT: StageInfo((Service.PREFILL,), True, "prefill waiting for embeddings"),
    StageName.PREFILL_QUEUE: StageInfo(
        (Service.PREFILL, Service.COLOCATED), False, "waiting for the first prefill chunk"
    ),
    StageName.PREFILL: StageInfo((Service.PREFILL, Service.COLOCATED), False, "prefill chunks"),
    StageName.KV_WAIT: StageInfo((Service.DECODE,), False, "waiting for room in the decode pool"),
    StageName.KV_TRANSFER: StageInfo((Service.DECODE,), False, "KV hand-off from prefill"),
    StageName.DECODE_QUEUE: StageInfo((Service.DECODE,), False, "waiting for a decode batch slot"),
    StageName.DECODE: StageInfo((Service.DECODE, Service.COLOCATED), False, "decode steps"),
    StageName.GAP: StageInfo((Service.ROUTER,), False, "critical-path time no stage accounts for"),
}


def stages_of(service: Service) -> list[StageName]:
    return [s for s, info in STAGES.items() if service in info.owners]
