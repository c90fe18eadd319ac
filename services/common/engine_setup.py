"""Building the engine the language-model services (prefill, decode) run."""

from __future__ import annotations

from pathlib import Path

from shared.engine import Engine, EngineConfig
from shared.models.loader import load_model


def build_engine(model_dir: Path, device: str, dtype: str, config: EngineConfig) -> Engine:
    """Load the language model and ``lm_head`` only (no vision weights) and wrap it in an engine."""
    model = load_model(model_dir, parts={"language"}, dtype=dtype, device=device)
    return Engine(model, config)
