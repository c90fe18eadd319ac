"""Process-wide settings the services and the router apply once they have started."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Take what start-up allocated (imported modules, the model, tokenizer tables: millions of
    objects with torch and transformers) out of the garbage collector's walks. Full collections
    while serving and the one at interpreter exit then visit only objects made since; without this
    the exit collection alone took ~5 s per process, longer than a container's stop grace period
    leaves once several processes share a CPU. (vLLM and SGLang freeze their heaps likewise.)"""
    gc.collect()
    gc.freeze()
