"""The codec: every message type round-trips; every kind of malformed input is a WireError."""

from __future__ import annotations

import dataclasses
import time

import msgpack
import pytest
import torch

from shared.engine import SamplingParams, SequenceState
from shared.transfer import reservation, state_from_reservation
from shared.wire import (
    CacheMiss,
    EncodeRequest,
    ErrorKind,
    ImageEmbeddingResult,
    ImageInput,
    Stage,
    StageError,
    WireError,
    decode,
    encode,
)
from shared.wire.messages import (
    FinishReason,
    ImagePlacement,
    MRopeSegment,
    PrefillRequest,
    Sampling,
    SequenceTokens,
    StageStamp,
    TokenBatch,
    TraceContext,
)

pytestmark = pytest.mark.unit

H1, H2 = "a" * 64, "0123456789abcdef" * 4


def result(dtype: torch.dtype = torch.bfloat16, n: int = 6, h: int = 8, s: int = 3) -> ImageEmbeddingResult:
    return ImageEmbeddingResult(
        request_id="req-1",
        image_index=2,
        content_hash=H1,
        grid_thw=(1, 4, 6),
        embeds=torch.randn(n, h).to(dtype),
        deepstack=torch.randn(s, n, h).to(dtype),
        cached=True,
        source="encoder@tcp://127.0.0.1:5600",
    )


def request(**changes) -> EncodeRequest:
    fields = dict(
        request_id="chatcmpl-42",
        images=[ImageInput(0, H1, b"\x89PNG..."), ImageInput(3, H2)],
        reply_to="tcp://10.0.0.7:7001",
        deadline=time.time() + 30,
    )
    fields.update(changes)
    return EncodeRequest(**fields)


def header_and_frames(msg) -> tuple[dict, list[bytes]]:
    frames = [bytes(f) for f in encode(msg)]
    return msgpack.unpackb(frames[0]), frames[1:]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32)


def repack(header: dict, data: list[bytes]) -> list[bytes]:
    return [msgpack.packb(header, use_bin_type=True), *data]


# ----- round trips ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_embedding_round_trip_is_bit_exact(dtype: torch.dtype) -> None:
    msg = result(dtype)
    got = decode(encode(msg))
    assert isinstance(got, ImageEmbeddingResult)
    assert got.embeds.dtype == dtype and got.deepstack.dtype == dtype
    # Bitwise, through an integer view: bf16 NaN payloads and -0.0 would hide behind float ==.
    assert torch.equal(bits(got.embeds), bits(msg.embeds))
    assert torch.equal(bits(got.deepstack), bits(msg.deepstack))
    assert (got.request_id, got.image_index, got.content_hash, got.grid_thw, got.cached, got.source) == (
        "req-1", 2, H1, (1, 4, 6), True, "encoder@tcp://127.0.0.1:5600",
    )  # fmt: skip


def test_tensor_frames_are_raw_bytes_not_copies() -> None:
    msg = result(torch.bfloat16)
    frames = encode(msg)
    assert len(frames) == 3
    assert bytes(frames[1]) == msg.embeds.view(torch.uint8).numpy().tobytes()
    header = msgpack.unpackb(frames[0])
    assert header["frames"][0] == {"dtype": "bfloat16", "shape": [6, 8]}
    # Sending views the tensor's own memory.
    msg.embeds[0, 0] = 123.0
    assert bytes(frames[1])[:2] == msg.embeds[0, :1].view(torch.uint8).numpy().tobytes()


def test_noncontiguous_and_empty_tensors() -> None:
    base = torch.randn(8, 6)
    msg = ImageEmbeddingResult("r", 0, H1, (1, 2, 2), base.t()[:4], torch.randn(0, 4, 8))
    got = decode(encode(msg))
    assert torch.equal(got.embeds, base.t()[:4]) and got.deepstack.shape == (0, 4, 8)


def test_request_round_trip() -> None:
    msg = request()
    got = decode(encode(msg))
    assert got.request_id == msg.request_id and got.reply_to == msg.reply_to and got.deadline == msg.deadline
    assert [(im.index, im.content_hash, im.data) for im in got.images] == [
        (0, H1, b"\x89PNG..."),
        (3, H2, None),
    ]


def test_error_and_miss_round_trip() -> None:
    err = decode(encode(StageError(None, None, ErrorKind.BAD_REQUEST, "bad", "encoder", Stage.ENCODER)))
    assert err.kind is ErrorKind.BAD_REQUEST and err.request_id is None and err.image_index is None
    assert err.stage is Stage.ENCODER
    err = decode(encode(StageError("r", 4, ErrorKind.BAD_IMAGE, "truncated PNG", "encoder", Stage.ENCODER)))
    assert (err.request_id, err.image_index, err.kind, err.message) == (
        "r",
        4,
        ErrorKind.BAD_IMAGE,
        "truncated PNG",
    )
    for stage in Stage:  # a prefill worker may report another stage's failure (decode's KV refusal)
        err = decode(encode(StageError("r", None, ErrorKind.UNAVAILABLE, "x", "prefill@a", stage)))
        assert err.stage is stage
    miss = decode(encode(CacheMiss("r", [1, 3], [H1, H2])))
    assert miss.image_indexes == [1, 3] and miss.content_hashes == [H1, H2]


def test_expect_limits_accepted_types() -> None:
    frames = encode(request())
    assert isinstance(decode(frames, [EncodeRequest]), EncodeRequest)
    with pytest.raises(WireError, match="not accepted here"):
        decode(frames, [ImageEmbeddingResult])


# ----- invalid outgoing messages never leave --------------------------------------------------------
def test_encode_validates_too() -> None:
    with pytest.raises(WireError, match="reply_to"):
        encode(request(reply_to="http://example.com"))
    with pytest.raises(WireError, match="not unique"):
        encode(request(images=[ImageInput(0, H1), ImageInput(0, H2)]))
    with pytest.raises(WireError, match="does not match embeds"):
        encode(ImageEmbeddingResult("r", 0, H1, (1, 2, 2), torch.zeros(1, 4), torch.zeros(2, 1, 5)))


# ----- malformed inbound ---------------------------------------------------------------------------
def test_garbage_msgpack() -> None:
    deep = b"\x91" * 100_000 + b"\xc0"  # an array nested 100,000 deep
    huge = b"\xdd\xff\xff\xff\xff"  # claims 4 billion items
    ext = b"\xc7\x05\x01abcde"  # msgpack extension types are never decoded into objects
    for garbage in (b"", b"\xc1", b"\x93\x01", b"\xff" * 20, b"\x81\xa1a", deep, huge, ext):
        with pytest.raises(WireError, match="msgpack|header"):
            decode([garbage])
    with pytest.raises(WireError, match="no header"):
        decode([])


def test_header_shape_is_strict() -> None:
    header, data = header_and_frames(request())
    with pytest.raises(WireError, match="header must be a map"):
        decode(repack([1, 2, 3], data))
    with pytest.raises(WireError, match="header must be a map"):
        decode(repack({**header, "extra": 1}, data))
    with pytest.raises(WireError, match="protocol version"):
        decode(repack({**header, "v": 99}, data))
    with pytest.raises(WireError, match="unknown message type"):
        decode(repack({**header, "type": "pickle"}, data))


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("request_id",), 7, "expected a string"),
        (("request_id",), "has space", "does not match"),
        (("request_id",), "x" * 500, "does not match"),
        (("deadline",), "soon", "expected a number"),
        (("deadline",), -1.0, "outside"),
        (("reply_to",), "file:///etc/passwd", "does not match"),
        (("images",), [], "length 0"),
        (("images",), "abc", "expected a list"),
        (("images", 0, "index"), True, "expected an int"),
        (("images", 0, "index"), -1, "outside"),
        (("images", 0, "index"), 1.5, "expected an int"),
        (("images", 0, "content_hash"), "XYZ", "does not match"),
        (("images", 0, "data"), "not-a-frame-index", "data frame index"),
        (("images", 0, "data"), 9, "data frame index"),
        (("images", 0), [1, 2], "expected a map"),
    ],
)
def test_wrong_field_types_and_ranges(path: tuple, value, match: str) -> None:
    header, data = header_and_frames(request())
    node = header["body"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(WireError, match=match) as info:
        decode(repack(header, data))
    if path[0] != "request_id":
        assert info.value.request_id == "chatcmpl-42"  # services can tag their error reply


def test_missing_and_unknown_fields() -> None:
    header, data = header_and_frames(request())
    del header["body"]["reply_to"]
    with pytest.raises(WireError, match="reply_to: required field is missing"):
        decode(repack(header, data))
    header, data = header_and_frames(request())
    header["body"]["images"][1]["exec"] = "rm -rf /"
    with pytest.raises(WireError, match="unknown field"):
        decode(repack(header, data))


def test_enum_values_are_checked() -> None:
    header, data = header_and_frames(StageError("r", 0, ErrorKind.INTERNAL, "x", "enc", Stage.ENCODER))
    header["body"]["kind"] = "segfault"
    with pytest.raises(WireError, match="not one of"):
        decode(repack(header, data))
    header, data = header_and_frames(StageError("r", 0, ErrorKind.INTERNAL, "x", "enc", Stage.ENCODER))
    header["body"]["stage"] = "gpu"
    with pytest.raises(WireError, match="stage: 'gpu' is not one of"):
        decode(repack(header, data))
    header, data = header_and_frames(StageError("r", 0, ErrorKind.INTERNAL, "x", "enc", Stage.ENCODER))
    del header["body"]["stage"]
    with pytest.raises(WireError, match="stage: required field is missing"):
        decode(repack(header, data))


def test_truncated_and_extra_frames() -> None:
    header, data = header_and_frames(result())
    with pytest.raises(WireError, match="describes 2 data frames but 1 arrived"):
        decode(repack(header, data[:1]))
    with pytest.raises(WireError, match="describes 2 data frames but 3 arrived"):
        decode(repack(header, [*data, b"\x00" * 4]))
    with pytest.raises(WireError, match="needs 96 bytes but the frame holds 95"):
        decode(repack(header, [data[0][:-1], data[1]]))


def test_bad_dtype_and_shape() -> None:
    for desc, match in [
        ({"dtype": "object", "shape": [6, 8]}, "unsupported dtype"),
        ({"dtype": "float32", "shape": [6, 8]}, "needs 192 bytes"),
        ({"dtype": "bfloat16", "shape": [8, 6, 1]}, "expected 2 dimensions"),
        ({"dtype": "bfloat16", "shape": [-6, -8]}, "non-negative"),
        ({"dtype": "bfloat16", "shape": "6x8"}, "shape must be a list"),
        ({"dtype": "bfloat16"}, "exactly 'dtype' and 'shape'"),
        ({"dtype": "int32", "shape": [6, 4]}, "not allowed"),
    ]:
        header, data = header_and_frames(result())
        header["frames"][0] = desc
        with pytest.raises(WireError, match=match):
            decode(repack(header, data))


def test_cross_field_checks_run_on_receive() -> None:
    header, data = header_and_frames(result(n=6))
    header["body"]["grid_thw"] = [1, 5, 5]  # 25 patches cannot give 6 tokens
    with pytest.raises(WireError, match="patch grid"):
        decode(repack(header, data))
    header, data = header_and_frames(result())
    header["body"]["grid_thw"] = [1, 4]
    with pytest.raises(WireError, match="expected 3 items"):
        decode(repack(header, data))


def test_frames_must_be_used_exactly_once() -> None:
    header, data = header_and_frames(result())
    header["body"]["deepstack"] = 0  # both tensors point at frame 1
    with pytest.raises(WireError, match="referenced twice"):
        decode(repack(header, data))
    header, data = header_and_frames(request())
    header["body"]["images"][0]["data"] = None  # the bytes frame is now orphaned
    with pytest.raises(WireError, match="not referenced"):
        decode(repack(header, data))


def test_bytes_field_rejects_a_tensor_frame() -> None:
    header, data = header_and_frames(request())
    header["frames"][0] = {"dtype": "uint8", "shape": [len(data[0])]}
    with pytest.raises(WireError, match="expected a bytes frame"):
        decode(repack(header, data))


# ----- tokens: per-sequence records ---------------------------------------------------------------
def test_token_batch_records_round_trip() -> None:
    stamp = StageStamp("prefill", 1.7e9, 0.25)
    msg = TokenBatch(
        "decode",
        [
            SequenceTokens("a", [5], [-0.1], [[5, 9]], [[-0.1, -2.5]], None, [stamp]),
            SequenceTokens("b", [6], None, [], [], FinishReason.STOP),
            # several steps coalesced into one record
            SequenceTokens("c", [7, 8, 9], [-1.0, -2.0, -3.0], finish_reason=FinishReason.LENGTH),
        ],
    )
    got = decode(encode(msg))
    a, b, c = got.records
    assert (a.request_id, a.token_ids, a.logprobs, a.finish_reason) == ("a", [5], [-0.1], None)
    assert a.top_token_ids == [[5, 9]] and a.top_logprobs == [[-0.1, -2.5]]
    assert [(s.stage, s.start, s.duration) for s in a.stamps] == [("prefill", 1.7e9, 0.25)]
    assert (b.logprobs, b.top_token_ids, b.top_logprobs, b.stamps) == (None, [], [], [])
    assert b.finish_reason is FinishReason.STOP
    assert c.token_ids == [7, 8, 9] and c.logprobs == [-1.0, -2.0, -3.0]
    assert c.finish_reason is FinishReason.LENGTH
    ab = decode(encode(TokenBatch("d", [SequenceTokens("x", [1], finish_reason=FinishReason.ABORT)])))
    assert ab.records[0].finish_reason is FinishReason.ABORT


def test_token_record_fields_with_defaults_may_be_absent() -> None:
    header, data = header_and_frames(TokenBatch("d", [SequenceTokens("a", [5])]))
    for name in ("logprobs", "top_token_ids", "top_logprobs", "finish_reason", "stamps"):
        del header["body"]["records"][0][name]
    (rec,) = decode(repack(header, data)).records
    assert (rec.logprobs, rec.top_token_ids, rec.top_logprobs, rec.finish_reason, rec.stamps) == (
        None, [], [], None, [],
    )  # fmt: skip
    # Each record gets its own lists, not one shared default.
    one, two = SequenceTokens("a", [1]), SequenceTokens("b", [2])
    assert one.stamps is not two.stamps and one.top_token_ids is not two.top_token_ids


@pytest.mark.parametrize(
    ("record", "match"),
    [
        (SequenceTokens("a", [5], [-0.1, -0.2]), "2 logprobs for 1 tokens"),
        (SequenceTokens("a", [5, 6], [-0.1]), "1 logprobs for 2 tokens"),
        (SequenceTokens("a", [5], None, [[5, 9]], [[-0.1]]), "top"),  # top-n lists differ
        (SequenceTokens("a", [5], None, [[5], [6]], [[-0.1], [-0.2]]), "top"),  # more than one per token
        (SequenceTokens("a", [5], None, [[5]], []), "top"),
        (SequenceTokens("a", [5], None, [list(range(21))], [[0.0] * 21]), "top"),  # top-n <= 20
        (SequenceTokens("a", [5], None, [[-1]], [[0.0]]), "outside"),
        (SequenceTokens("a", [], None), "token_ids: length 0"),
        (SequenceTokens("a", [-3]), "outside"),
        (SequenceTokens("a", [5], stamps=[StageStamp("Pre fill", 0.0, 0.0)]), "does not match"),
        (SequenceTokens("a", [5], stamps=[StageStamp("prefill", 0.0, -1.0)]), "outside"),
    ],
)
def test_token_records_are_checked(record: SequenceTokens, match: str) -> None:
    with pytest.raises(WireError, match=match):
        encode(TokenBatch("d", [record]))


@pytest.mark.parametrize(
    ("traceparent", "match"),
    [
        ("00-abc-def-01", "not a W3C trace context"),
        ("x" * 56, "length"),
        ("00-" + "A" * 32 + "-" + "b" * 16 + "-01", "W3C"),
    ],
)
def test_a_trace_context_must_be_w3c(traceparent: str, match: str) -> None:
    msg = EncodeRequest(
        "r", [ImageInput(0, "a" * 64, b"x")], "tcp://h:1", 1.0, TraceContext(traceparent, 1.0)
    )
    with pytest.raises(WireError, match=match):
        encode(msg)
    ok = EncodeRequest("r", [ImageInput(0, "a" * 64, b"x")], "tcp://h:1", 1.0, TraceContext("", 2.5))
    got = decode(encode(ok)).trace
    assert got is not None and (got.traceparent, got.clock) == ("", 2.5)  # not traced; the clock travels


def test_token_batch_checks_the_batch_and_the_finish_reason() -> None:
    with pytest.raises(WireError, match="records: length 0"):
        encode(TokenBatch("d", []))
    with pytest.raises(WireError, match="more than one record"):
        encode(TokenBatch("d", [SequenceTokens("a", [5]), SequenceTokens("a", [6])]))
    header, data = header_and_frames(
        TokenBatch("d", [SequenceTokens("a", [5], finish_reason=FinishReason.STOP)])
    )
    for reason in ("", "prefilled", "eos"):  # the old "goes on" marker and the engine-only reason too
        header["body"]["records"][0]["finish_reason"] = reason
        with pytest.raises(WireError, match="is not one of: stop, length, abort"):
            decode(repack(header, data))


# ----- prefill: the MRoPE layout -------------------------------------------------------------------
def prefill_request(layout: list[MRopeSegment]) -> PrefillRequest:
    sampling = Sampling(0.0, 1.0, 0, 0.0, None, 4, [], False, None)
    return PrefillRequest(
        "p", list(range(10)), layout, 3, [ImagePlacement(0, H1, 2, 6)], sampling,
        "tcp://127.0.0.1:5700", "tcp://127.0.0.1:5800", time.time() + 30,
    )  # fmt: skip


def test_mrope_layout_text_runs_have_no_grid() -> None:
    layout = [MRopeSegment(0, 2, 0, None), MRopeSegment(2, 6, 2, (1, 2, 3)), MRopeSegment(8, 2, 5, None)]
    got = decode(encode(prefill_request(layout)))
    assert [(s.start, s.length, s.position, s.grid) for s in got.layout] == [
        (0, 2, 0, None), (2, 6, 2, (1, 2, 3)), (8, 2, 5, None),
    ]  # fmt: skip
    with pytest.raises(WireError, match="cannot have grid"):  # 8 image tokens, 6 on the grid
        encode(prefill_request([MRopeSegment(0, 2, 0, None), MRopeSegment(2, 8, 2, (1, 2, 3))]))
    header, data = header_and_frames(prefill_request(layout))
    header["body"]["layout"][0]["grid"] = [0, 0, 0]  # the old text-run marker
    with pytest.raises(WireError, match="outside"):
        decode(repack(header, data))


# ----- kv: the reservation ------------------------------------------------------------------------
def test_a_seeded_reservation_carries_no_generator_state() -> None:
    """A seeded request's randomness is its seed and its sampled tokens: no generator bytes travel."""
    state = SequenceState("chatcmpl-7", [5, 6, 7, 8], 3, -2, SamplingParams(temperature=1.0, seed=7))
    trace = TraceContext("00-" + "ab" * 16 + "-" + "cd" * 8 + "-01", time.time())
    msg = reservation(state, 3, "tcp://10.0.0.7:7001", time.time() + 5, "prefill@tcp://10.0.0.5:5700", trace)
    header, data = header_and_frames(msg)
    assert data == [] and header["frames"] == []  # no tensor of any kind
    got = decode(encode(msg))
    assert state_from_reservation(got) == state
    assert {f.name: type(getattr(got, f.name)) for f in dataclasses.fields(got)} == {
        "request_id": str, "token_ids": list, "num_prompt_tokens": int, "mrope_delta": int,
        "sampling": Sampling, "num_layers": int, "reply_to": str, "deadline": float, "source": str,
        "trace": TraceContext,
    }  # fmt: skip
    assert got.trace is not None and (got.trace.traceparent, got.trace.clock) == (
        trace.traceparent,
        trace.clock,
    )
    assert got.sampling.seed == 7 and all(type(t) is int for t in got.token_ids)
    header["body"]["rng_state"] = list(range(16))  # what an older prefill worker would send
    with pytest.raises(WireError, match="unknown field"):
        decode(repack(header, data))


def test_token_controls_travel_with_the_reservation() -> None:
    """min_tokens, logit_bias, allowed_token_ids, a guide and bad_words cross prefill -> decode as the
    engine had them; a bias list whose two halves differ in length, or bad-word lengths that do not
    add up to their ids, are refused."""
    params = SamplingParams(
        max_tokens=9, min_tokens=4, logit_bias=((5, -2.5), (8, 100.0)), stop_token_ids=(3,),
        allowed_token_ids=(5, 8, 3), guide='\\{"a": [0-9]+\\}', bad_words=((7,), (4, 9, 9), (2, 2)),
    )  # fmt: skip
    state = SequenceState("chatcmpl-8", [5, 6, 7], 3, 0, params)
    msg = reservation(state, 3, "tcp://10.0.0.7:7001", time.time() + 5, "prefill@tcp://10.0.0.5:5700")
    assert state_from_reservation(decode(encode(msg))) == state
    header, data = header_and_frames(msg)
    header["body"]["sampling"]["bias_values"] = [1.0]
    with pytest.raises(WireError, match="differ in length"):
        decode(repack(header, data))
    header, data = header_and_frames(msg)
    header["body"]["sampling"]["bad_word_lengths"] = [1, 3]
    with pytest.raises(WireError, match="do not add up"):
        decode(repack(header, data))


# ----- lists of scalars: checked in bulk, refused item by item ---------------------------------------
def _token_batch_with() -> tuple[dict, list[bytes]]:
    rec = SequenceTokens("req-1", [1, 2, 3], logprobs=[-0.5, -1.0, -2.0])
    return header_and_frames(TokenBatch("decode", [rec]))


@pytest.mark.parametrize(
    ("field", "items", "match"),
    [
        ("token_ids", [1, True, 3], r"token_ids\[1\]: expected an int"),
        ("token_ids", [1, 2.0, 3], r"token_ids\[1\]: expected an int"),
        ("token_ids", [1, 2, -3], r"token_ids\[2\]: -3 is outside"),
        ("token_ids", [1, 2, 1 << 40], r"token_ids\[2\]: .* is outside"),
        ("logprobs", [-0.5, float("nan"), -2.0], r"logprobs\[1\]: must be finite"),
        ("logprobs", [-0.5, "x", -2.0], r"logprobs\[1\]: expected a number"),
    ],
)
def test_a_bad_item_in_a_list_of_scalars_is_named(field: str, items: list, match: str) -> None:
    header, data = _token_batch_with()
    header["body"]["records"][0][field] = items
    with pytest.raises(WireError, match=match):
        decode(repack(header, data))


def test_lists_of_scalars_keep_their_values_and_types() -> None:
    header, data = _token_batch_with()
    header["body"]["records"][0]["logprobs"] = [-1, -0.25, 0]  # ints are numbers: floats on arrival
    got = decode(repack(header, data)).records[0]
    assert got.token_ids == [1, 2, 3] and all(type(t) is int for t in got.token_ids)
    assert got.logprobs == [-1.0, -0.25, 0.0] and all(type(x) is float for x in got.logprobs)
    miss = CacheMiss("req-1", [0, 1], [H1, H2])
    assert decode(encode(miss)).content_hashes == [H1, H2]
    header, data = header_and_frames(miss)
    header["body"]["content_hashes"] = [H1, "XYZ"]
    with pytest.raises(WireError, match=r"content_hashes\[1\]: 'XYZ' does not match"):
        decode(repack(header, data))
