"""A backend the test scripts (``Scripted``: it keeps the submitted jobs, the test feeds their
events through ``job.sink``) and the bundled demo's tokenizer, for router tests without workers."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from router.backend import Backend
from router.jobs import Job
from router.metrics import RouterMetrics
from shared.multimodal.prompt import PromptBuilder

DEMO = Path(__file__).resolve().parents[2] / "shared" / "assets" / "demo"


class Scripted(Backend):
    """Keeps the submitted jobs: the test feeds their events through ``job.sink``."""

    def __init__(self) -> None:
        super().__init__(RouterMetrics(), 4, "scripted")
        self.jobs: list[Job] = []
        self.aborted: list[str] = []

    def submit(self, job: Job) -> None:
        self.jobs.append(job)

    def abort(self, rid: str, reason: str) -> None:
        self.aborted.append(rid)

    def job(self, rid: str) -> Job:
        return next(j for j in self.jobs if j.rid == rid)


@cache
def demo_tokenizer() -> Any:
    return PromptBuilder.from_checkpoint(DEMO).tokenizer
