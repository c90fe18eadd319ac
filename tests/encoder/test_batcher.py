"""The patch-budget batcher: fairness, budget, request isolation, deadlines."""

from __future__ import annotations

import pytest
import torch

from shared.vision.batcher import PatchBatcher, PendingImage, Waiter

pytestmark = pytest.mark.unit


def image(key: str, patches: int, request: str = "r", deadline: float = 1e12) -> PendingImage:
    waiter = Waiter(request, 0, "tcp://127.0.0.1:1", deadline, 0.0)
    return PendingImage(key, key, torch.zeros(patches, 1), (1, 1, patches), [waiter])


def keys(batch: list[PendingImage]) -> list[str]:
    return [im.key for im in batch]


def test_fills_the_budget_first_fit_in_arrival_order() -> None:
    b = PatchBatcher(patch_budget=100)
    for key, n in [("a", 40), ("b", 70), ("c", 30), ("d", 30)]:
        b.add(image(key, n))
    assert keys(b.next_batch()) == ["a", "c", "d"]  # b does not fit beside a; c and d flow past it
    assert keys(b.next_batch()) == ["b"]
    assert b.next_batch() == [] and len(b) == 0


def test_a_large_image_runs_alone_and_never_blocks_small_ones_for_long() -> None:
    b = PatchBatcher(patch_budget=100)
    b.add(image("small0", 10))
    b.add(image("huge", 500))  # over the whole budget
    for i in range(1, 4):
        b.add(image(f"small{i}", 10))
    assert keys(b.next_batch()) == ["small0", "small1", "small2", "small3"]
    assert keys(b.next_batch()) == ["huge"]  # its turn came: alone, over budget


def test_the_oldest_image_is_always_taken() -> None:
    b = PatchBatcher(patch_budget=100)
    b.add(image("big", 90))
    for i in range(5):
        b.add(image(f"s{i}", 20))
    assert keys(b.next_batch()) == ["big"]
    assert keys(b.next_batch()) == ["s0", "s1", "s2", "s3", "s4"]


def test_without_cross_request_batching_a_batch_is_one_request() -> None:
    b = PatchBatcher(patch_budget=1000, cross_request=False)
    b.add(image("a1", 10, "A"))
    b.add(image("b1", 10, "B"))
    b.add(image("a2", 10, "A"))
    assert keys(b.next_batch()) == ["a1", "a2"]
    assert keys(b.next_batch()) == ["b1"]


def test_expired_waiters_are_returned_and_abandoned_images_dropped() -> None:
    b = PatchBatcher(patch_budget=1000)
    b.add(image("old", 10, "A", deadline=5.0))
    shared = image("shared", 10, "A", deadline=5.0)
    shared.waiters.append(Waiter("B", 1, "tcp://127.0.0.1:2", 50.0, 0.0))
    b.add(shared)
    expired = b.expire(now=10.0)
    assert sorted((w.request_id, w.image_index) for w in expired) == [("A", 0), ("A", 0)]
    assert keys(b.next_batch()) == ["shared"] and [w.request_id for w in shared.waiters] == ["B"]


def test_find_and_duplicate_add() -> None:
    b = PatchBatcher(patch_budget=10)
    im = image("k", 4)
    b.add(im)
    assert b.find("k") is im and b.queued_patches == 4
    with pytest.raises(ValueError, match="already queued"):
        b.add(image("k", 4))
