"""The engine core of the prefill and decode services: paged KV, continuous batching, sampling.

See ``engine.py`` for the life cycle of a request.
"""

from shared.engine.config import EngineConfig
from shared.engine.engine import Engine
from shared.engine.kv_transfer import SequenceState
from shared.engine.request import FinishReason, ImageInput, Request, SamplingParams, TokenOutput

__all__ = [
    "Engine",
    "EngineConfig",
    "FinishReason",
    "ImageInput",
    "Request",
    "SamplingParams",
    "SequenceState",
    "TokenOutput",
]
