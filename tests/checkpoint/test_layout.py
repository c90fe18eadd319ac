from __future__ import annotations

import pytest
import torch

from shared.checkpoint.layout import (
    _split_into_shards,
    fuse_experts,
    read_published,
    split_experts,
    transpose_fused_experts,
    write_published,
)

pytestmark = pytest.mark.unit

P = "model.language_model.layers.3.mlp.experts"


def _fused(e: int = 3, h: int = 6, i: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        f"{P}.gate_up_proj": torch.randn(e, h, 2 * i, generator=g),
        f"{P}.down_proj": torch.randn(e, i, h, generator=g),
        "model.language_model.norm.weight": torch.ones(h),
    }


def test_split_and_fuse_are_inverse() -> None:
    fused = _fused()
    per = split_experts(fused)
    assert per[f"{P}.2.gate_proj.weight"].shape == (4, 6)
    assert per[f"{P}.2.down_proj.weight"].shape == (6, 4)
    torch.testing.assert_close(per[f"{P}.1.up_proj.weight"], fused[f"{P}.gate_up_proj"][1, :, 4:].T)
    again = fuse_experts(per)
    assert set(again) == set(fused) and all(torch.equal(again[k], fused[k]) for k in fused)


def test_transformers_orientation_is_a_transpose() -> None:
    fused = _fused()
    memory = transpose_fused_experts(fused)
    assert memory[f"{P}.gate_up_proj"].shape == (3, 8, 6) and memory[f"{P}.down_proj"].shape == (3, 6, 4)
    assert torch.equal(transpose_fused_experts(memory)[f"{P}.down_proj"], fused[f"{P}.down_proj"])


def test_missing_expert_is_an_error() -> None:
    per = split_experts(_fused())
    del per[f"{P}.1.gate_proj.weight"], per[f"{P}.1.up_proj.weight"], per[f"{P}.1.down_proj.weight"]
    with pytest.raises(ValueError, match="expert ids"):
        fuse_experts(per)


@pytest.mark.parametrize("n, shards", [(5, 5), (10, 3), (7, 1), (3, 2)])
def test_shards_are_contiguous_and_nonempty(n: int, shards: int) -> None:
    names = [f"t{i}" for i in range(n)]
    sizes = {name: (100 if i == 0 else 1) for i, name in enumerate(names)}  # one huge tensor first
    groups = _split_into_shards(names, sizes, shards)
    assert len(groups) == shards and all(groups) and sum(groups, []) == names


def test_too_many_shards_is_an_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="shards"):
        write_published(_fused(), tmp_path, shards=4)


def test_rewrite_removes_stale_shards(tmp_path) -> None:
    write_published(_fused(), tmp_path, shards=3)
    write_published(_fused(), tmp_path, expert_layout="per-expert", dtype="bfloat16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    back = read_published(tmp_path)
    assert back[f"{P}.gate_up_proj"].dtype == torch.bfloat16
    assert torch.equal(back[f"{P}.gate_up_proj"], _fused()[f"{P}.gate_up_proj"].to(torch.bfloat16))
