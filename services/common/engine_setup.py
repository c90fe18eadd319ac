"""Building the engine the language-model services (prefill, decode) run."""

from __future__ import annotations

from pathlib import Path

from shared.engine import Engine, EngineConfig
from shared.engine.guided import Guides
from shared.models.loader import load_model


def build_engine(model_dir: Path, device: str, dtype: str, config: EngineConfig) -> Engine:
    """Load the language model and ``lm_head`` only (no vision weights) and wrap it in an engine,
    with the checkpoint's vocabulary for guided requests."""
    model = load_model(model_dir, parts={"language"}, dtype=dtype, device=device)
    return Engine(model, config, Guides.from_checkpoint(model_dir, model.config.eos_token_ids[0]))
