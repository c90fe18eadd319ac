"""Moving a sequence between engines: what prefill ships and decode receives.

A sequence exported mid-generation (whole, layer by layer, or each layer in pieces) and imported into a second engine,
with another block size, continues with the same tokens, greedy or seeded sampling alike; its
state is plain numbers (no generator state), and a swapped-out import waits in host memory.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from shared.engine import Engine, EngineConfig, FinishReason, Request, SamplingParams, SequenceState
from shared.engine.kv_pool import KVPool
from tests.engine.prompts import Picture, build, request

pytestmark = pytest.mark.unit

GREEDY = SamplingParams(temperature=0, max_tokens=14, ignore_eos=True)
SEEDED = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, seed=1234, max_tokens=14, ignore_eos=True)
SEED7 = SamplingParams(temperature=1.0, seed=7, max_tokens=14, ignore_eos=True)
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]


def tokens_alone(lm, req: Request) -> list[int]:
    return Engine(lm, EngineConfig(num_blocks=64)).generate([req])[req.request_id]


def make_request(lm, vision, params: SamplingParams, rid: str = "moving", **kw) -> Request:
    prompt = build([40, Picture((1, 12, 16), 3), 21], lm.config, seed=9)
    return request(rid, prompt, lm.config, vision, params, **kw)


def filler(lm, rid: str, n: int) -> Request:
    return Request(
        rid, build([n], lm.config, seed=n).ids, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    )


def pending(state: SequenceState) -> SequenceState:
    """What a reservation carries: the tokens whose KV moves (all but the last sampled one)."""
    return dataclasses.replace(state, token_ids=state.token_ids[:-1])


def move(src: Engine, dst: Engine, rid: str, layerwise: bool, piece: int | None = None) -> SequenceState:
    """``piece``: send each layer in pieces of that many tokens, as a pipelined prefill does."""
    state = src.export_state(rid)
    if layerwise:
        assert dst.begin_import(pending(state)) is not None
        for layer in range(src.pool.num_layers):
            k, v = src.export_kv_layer(rid, layer)
            step = piece or len(k)
            for start in range(0, len(k), step):
                dst.import_kv_layer(rid, layer, k[start : start + step], v[start : start + step], start)
        dst.finish_import(rid, state.token_ids[-1:])
    else:
        dst.import_sequence(state, src.export_kv(rid))
    return state


@pytest.mark.parametrize("how", ["whole", "layerwise", "pieces"])
@pytest.mark.parametrize("params", [GREEDY, SEEDED, SEED7], ids=["greedy", "seeded", "seed7"])
def test_export_mid_generation_continues_elsewhere(params, how, lm, vision):
    ref = tokens_alone(lm, make_request(lm, vision, params))
    src = Engine(lm, EngineConfig(block_size=16, num_blocks=64, prefill_chunk_size=32))
    dst = Engine(lm, EngineConfig(block_size=8, num_blocks=64))
    src.add_request(make_request(lm, vision, params))
    src.add_request(filler(lm, "src-neighbour", 20))
    dst.add_request(filler(lm, "dst-neighbour", 33))
    got: list[int] = []
    while len(got) < 6:
        got += [o.token_id for o in src.step() if o.request_id == "moving"]
    state = move(src, dst, "moving", how != "whole", 13 if how == "pieces" else None)
    assert state.num_kv_tokens == len(state.token_ids) - 1 and state.token_ids[-6:] == got
    src.abort("moving")
    outs = []
    while dst.has_unfinished():
        outs += [o for o in dst.step() if o.request_id == "moving"]
    assert got + [o.token_id for o in outs] == ref
    assert outs[-1].finish_reason is FinishReason.LENGTH
    src.generate([])
    assert src.num_free_blocks == 64 and dst.num_free_blocks == 64


def test_prefill_only_then_decode_elsewhere(lm, vision):
    """The disaggregated flow: prefill samples the first token and keeps the KV until released."""
    ref = tokens_alone(lm, make_request(lm, vision, SEEDED))
    prefill = Engine(lm, EngineConfig(block_size=16, num_blocks=32, prefill_chunk_size=16))
    decode = Engine(lm, EngineConfig(block_size=4, num_blocks=64))
    prefill.add_request(make_request(lm, vision, SEEDED, prefill_only=True))
    outs = []
    while prefill.has_unfinished():
        outs += prefill.step()
    assert len(outs) == 1 and outs[0].finish_reason is FinishReason.PREFILLED
    assert prefill.num_free_blocks < 32  # held for the export
    move(prefill, decode, "moving", layerwise=True)
    prefill.release("moving")
    assert prefill.num_free_blocks == 32
    tokens = [outs[0].token_id] + decode.generate([])["moving"]
    assert tokens == ref and decode.num_free_blocks == 64


def test_a_state_is_plain_numbers(lm, vision):
    """A seeded request's randomness is its seed and its sampled tokens: no generator state."""
    src = Engine(lm, EngineConfig(num_blocks=64))
    src.add_request(make_request(lm, vision, SEED7, prefill_only=True))
    list(iter_outputs(src))
    state = src.export_state("moving")
    assert [f.name for f in dataclasses.fields(state)] == [
        "request_id", "token_ids", "num_prompt_tokens", "mrope_delta", "params",
    ]  # fmt: skip
    assert state.params.seed == 7 and state.num_kv_tokens == state.num_prompt_tokens


@pytest.mark.parametrize("params", [GREEDY, SEED7], ids=["greedy", "seed7"])
def test_imported_sequences_are_swapped_under_pressure(lm, vision, params):
    """A decode engine too small for its imports swaps KV out to host memory and back in; tokens
    are unchanged."""
    reqs = [make_request(lm, vision, params, rid=f"s{i}") for i in range(4)]
    ref = tokens_alone(lm, reqs[0])
    prefill = Engine(lm, EngineConfig(num_blocks=64))
    for r in reqs:
        prefill.add_request(Request(**{**r.__dict__, "prefill_only": True}))
    firsts = {o.request_id: o.token_id for o in iter_outputs(prefill)}
    decode = Engine(lm, EngineConfig(block_size=8, num_blocks=30))  # a sequence needs up to 16 blocks
    for r in reqs:
        move(prefill, decode, r.request_id, layerwise=False)
        prefill.release(r.request_id)
    got = {rid: [tok] for rid, tok in firsts.items()}
    swapped = []
    while decode.has_unfinished():
        for o in decode.step():
            got[o.request_id].append(o.token_id)
        # Imports arrive with one sampled token; a waiting one with more was swapped out.
        swapped += [s.host_kv for s in decode.scheduler.waiting if s.num_output_tokens > 1]
    assert decode.scheduler.num_preemptions > 0 and swapped
    assert all(t is not None and t.device.type == "cpu" for kv in swapped for t in kv.keys + kv.values)
    assert all(tokens == ref for tokens in got.values())
    assert decode.num_free_blocks == 30 and prefill.num_free_blocks == 64


@pytest.mark.parametrize("device", DEVICES)
def test_read_to_host_copies_a_sequence_out_of_the_pool(device):
    pool = KVPool(2, 6, 4, 2, 8, torch.float32, torch.device(device))
    pool.k.normal_()
    pool.v.normal_()
    table, length = [5, 1, 3], 10
    host = pool.read_to_host(table, length)
    same = pool.read(table, length)
    if device == "cuda":
        torch.cuda.synchronize()  # the copies to host were queued, not awaited
    for layer in range(2):
        for got, want in ((host.keys[layer], same.keys[layer]), (host.values[layer], same.values[layer])):
            assert got is not None and want is not None
            assert got.device.type == "cpu" and got.is_pinned() == (device == "cuda")
            assert torch.equal(got, want.cpu())
    pool.k.zero_()  # the blocks serve others meanwhile; the host copy is unaffected
    pool.v.zero_()
    pool.write([0, 2, 4], host)
    assert torch.equal(pool.read([0, 2, 4], length).keys[1].cpu(), same.keys[1].cpu())


def test_begin_import_refuses_when_full(lm, vision):
    src = Engine(lm, EngineConfig(num_blocks=64))
    src.add_request(make_request(lm, vision, GREEDY, prefill_only=True))
    list(iter_outputs(src))
    dst = Engine(lm, EngineConfig(block_size=8, num_blocks=8))  # 9 blocks needed
    with pytest.raises(ValueError, match="blocks"):
        dst.begin_import(pending(src.export_state("moving")))
    dst = Engine(lm, EngineConfig(block_size=8, num_blocks=30))
    dst.add_request(filler(lm, "big", 190))
    dst.step()
    assert dst.begin_import(pending(src.export_state("moving"))) is None
    with pytest.raises(ValueError, match="layers"):
        dst.import_sequence(src.export_state("moving"), src.export_kv("moving").__class__(1))


def test_pieces_arrive_in_order_and_complete_every_layer(lm, vision):
    """A layer's pieces must continue where the last one ended; done needs every layer complete."""
    src = Engine(lm, EngineConfig(num_blocks=64))
    src.add_request(make_request(lm, vision, GREEDY, prefill_only=True))
    list(iter_outputs(src))
    state = src.export_state("moving")
    dst = Engine(lm, EngineConfig(block_size=8, num_blocks=30))
    assert dst.begin_import(pending(state)) is not None
    k, v = src.export_kv_layer("moving", 0)
    with pytest.raises(ValueError, match="tokens from 8 arrived, 0 expected"):
        dst.import_kv_layer("moving", 0, k[8:16], v[8:16], 8)
    dst.import_kv_layer("moving", 0, k[:8], v[:8], 0)
    with pytest.raises(ValueError, match="overrun"):
        dst.import_kv_layer("moving", 0, k, v, 8)
    with pytest.raises(ValueError, match="incomplete"):
        dst.finish_import("moving", state.token_ids[-1:])
    assert dst.abort("moving") and dst.num_free_blocks == 30


def iter_outputs(engine: Engine):
    while engine.has_unfinished():
        yield from engine.step()


@pytest.mark.parametrize("layers_done", [0, 1, "all"])
def test_abort_during_a_layerwise_import_frees_its_blocks(lm, vision, layers_done):
    """The router gives up while prefill is still sending: the half-imported sequence goes away."""
    src = Engine(lm, EngineConfig(num_blocks=64))
    src.add_request(make_request(lm, vision, GREEDY, prefill_only=True))
    list(iter_outputs(src))
    dst = Engine(lm, EngineConfig(block_size=8, num_blocks=30))
    state = src.export_state("moving")
    assert dst.begin_import(pending(state)) is not None
    assert dst.num_free_blocks < 30
    n = src.pool.num_layers if layers_done == "all" else layers_done
    for layer in range(n):
        dst.import_kv_layer("moving", layer, *src.export_kv_layer("moving", layer))
    if layers_done == "all":
        dst.finish_import("moving", state.token_ids[-1:])
    assert dst.abort("moving")
    assert dst.num_free_blocks == 30 and not dst.has_unfinished() and not dst.abort("moving")
    move(src, dst, "moving", layerwise=True)  # the same id can come again
    assert len([o for o in iter_outputs(dst) if o.request_id == "moving"]) == GREEDY.max_tokens - 1
