"""``GET /v1/models``: the one model this router serves, under its served name, with its context
length (``max_model_len``, as vLLM reports it)."""

from __future__ import annotations

from fastapi import APIRouter

from router.api.deps import ConfigDep, PreparerDep

router = APIRouter()


@router.get("/v1/models")
async def models(cfg: ConfigDep, prep: PreparerDep) -> dict:
    card = {
        "id": cfg.model_name,
        "object": "model",
        "created": 0,
        "owned_by": "epd",
        "max_model_len": prep.max_model_len,
    }
    return {"object": "list", "data": [card]}
