"""Process-wide settings the services and the router apply once they have started."""

from __future__ import annotations

import gc
import os
import time


def freeze_startup_heap() -> None:
    """Take what start-up allocated (imported modules, the model, tokenizer tables: millions of
    objects with torch and transformers) out of the garbage collector's walks. Full collections
    while serving and the one at interpreter exit then visit only objects made since; without this
    the exit collection alone took ~5 s per process, longer than a container's stop grace period
    leaves once several processes share a CPU. (vLLM and SGLang freeze their heaps likewise.)"""
    gc.collect()
    gc.freeze()


SKEW_ENV = "EPD_FAKE_CLOCK_SKEW_S"


def skew_wall_clock() -> float:
    """Fault injection for tests: with ``EPD_FAKE_CLOCK_SKEW_S=S`` set, this process's wall clock
    (``time.time``, ``time.time_ns``, so log lines and anything else that reads it) runs S seconds
    off, as on a machine whose clock disagrees with its peers'. Monotonic clocks are left alone.
    Returns the skew (0.0 when unset)."""
    skew = float(os.environ.get(SKEW_ENV, "0") or 0)
    if skew:
        real, real_ns = time.time, time.time_ns
        time.time = lambda: real() + skew
        time.time_ns = lambda: real_ns() + int(skew * 1e9)
    return skew
