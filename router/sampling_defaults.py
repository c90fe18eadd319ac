"""The sampling defaults of a request that leaves a parameter out: the model's or OpenAI's.

A published checkpoint says how it wants to be sampled in ``generation_config.json`` (the
Qwen3-VL ones set a temperature, top-p and top-k there). With ``--generation-config auto`` (the
default, as in vLLM) a request that leaves ``temperature``, ``top_p``, ``top_k``, ``min_p``, a
penalty (``presence_penalty``, ``frequency_penalty``, ``repetition_penalty``) or ``max_tokens`` out
gets the model's value (``max_new_tokens`` for ``max_tokens``); with ``none`` it gets OpenAI's
(temperature 1, no filters or penalties, the context's room). A value the request sets always
wins. ``do_sample`` is not read (vLLM does not read it either): a file without
a temperature leaves OpenAI's 1. Values outside the API's own bounds are dropped with a warning.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from router.protocol import SamplingFields

log = logging.getLogger(__name__)

# generation_config.json key -> the request field it stands in for
KEYS = {
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repetition_penalty": "repetition_penalty",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "max_new_tokens": "max_tokens",
}


def load_sampling_defaults(model_dir: Path, mode: str = "auto") -> dict[str, Any]:
    """The request fields (sampling, penalties, ``max_tokens``: ``KEYS``) that the model's
    ``generation_config.json`` sets, checked against the API's bounds; {} for mode ``none``
    (``auto`` otherwise) or a checkpoint without the file."""
    if mode == "none":
        return {}
    try:
        raw = json.loads((model_dir / "generation_config.json").read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("generation_config.json unreadable (%s): OpenAI's sampling defaults", e)
        return {}
    defaults: dict[str, Any] = {}
    if not isinstance(raw, dict):
        return defaults
    for key, field in KEYS.items():
        value = raw.get(key)
        if value is None:
            continue
        try:  # the same bounds as a request's own value (SamplingFields)
            SamplingFields.model_validate({"model": "m", field: value})
        except ValueError:
            log.warning("generation_config.json: %s=%r is out of the API's bounds; not used", key, value)
            continue
        defaults[field] = value
    if defaults:
        log.info(
            "sampling defaults from generation_config.json: %s (--generation-config none: OpenAI's)", defaults
        )
    return defaults


def sampling_value(req: SamplingFields, field: str, defaults: dict[str, Any]) -> Any:
    """The request's own value of ``field`` when it set one, else the model's default, else the
    API's."""
    if field in req.model_fields_set or field not in defaults:
        return getattr(req, field)
    return defaults[field]
