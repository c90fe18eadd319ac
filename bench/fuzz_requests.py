"""What ``bench.fuzz_http`` sends: hypothesis strategies for HTTP requests to the router, drawn from
the OpenAPI schema the router serves (``/openapi.json``).

``calls(openapi, model)`` draws one ``Call`` of four kinds:

- ``valid``: a body drawn from its route's schema (``schema_values``: hypothesis-jsonschema for
  each leaf), then made likely to run: the served model's name, a few tokens at most (or a hundred,
  when the call leaves early), and sometimes images and videos (good and bad ones, ``media()``) in
  a user message.
- ``mutated``: such a body with one mutation (mostly) to three: a field at and past the bounds its
  schema sets, past 64 bits, or of another type (``edge_values``); a value worth trying
  (``fields``: NaN, lone surrogates, deep nesting, OpenAI fields we do not support, such as tools,
  logit_bias, n); a location dropped or given any value; a lone surrogate (which JSON can
  carry) in text the tokenizer reads; an unknown field.
- ``raw``: bytes no schema allows: truncated or invalid JSON, other top-level types, other content
  types and charsets, deep nesting, a body of megabytes.
- ``probe``: the GET routes, wrong methods and unknown paths, with odd query strings.

Any call may carry odd headers (request ids, traceparent, authorization). A streamed call may
hang up after its first event and a plain one before its answer, so that aborts run too.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

MiB = 1 << 20
DEEP = "\x00deep\x00"  # stands for a nested value too deep for json.dumps, spliced into the text


@dataclass(frozen=True)
class Call:
    kind: str  # valid, mutated, raw, probe
    method: str
    path: str  # with the query string, if any
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hangup: bool = False  # leave early: after the first event, or before a plain answer

    @property
    def route(self) -> str:
        return self.path.split("?", 1)[0]


# ----- media: image and video URLs, built once -----------------------------------------------------
def _data(mime: str, data: bytes) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def _image(width: int, height: int, fmt: str = "PNG") -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (width % 256, height % 256, 90)).save(buf, fmt)
    return buf.getvalue()


def _png_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` pixels, with one byte of data."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


@functools.cache
def media() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(image URLs, video URLs), good and bad. No URL here reaches the network: hosts are private,
    malformed, or the URL fails before a connection."""
    from shared.multimodal.video_synth import bad_frame_lists, bad_video_corpus, make_frame_list, make_video

    png = _image(32, 32)
    images = (
        _data("image/png", png), _data("image/jpeg", _image(48, 40, "JPEG")),
        _data("image/webp", _image(40, 40, "WEBP")), _data("image/gif", _image(24, 24, "GIF")),
        _data("image/png", _image(1, 1)), _data("image/png", _image(3000, 4)),
        _data("image/png", png[: len(png) // 2]), _data("image/png", b"not an image"),
        _data("image/png", _png_bomb()), _data("image/bmp", _image(16, 16, "BMP")), _data("image/png", b""),
        "data:image/png;base64,!!!not base64!!!", "data:image/png,raw", "data:image/png;base64,",
        "data:;base64," + _data("", png).split(",", 1)[1], _data("image/png", png)[:-3],
        "data:image/png;base64," + base64.urlsafe_b64encode(png).decode(), "data:", "DATA:IMAGE/PNG;BASE64,AA==",
        "http://127.0.0.1:1/a.png", "http://localhost/a.png", "http://10.0.0.1/a.png", "http://[::1]/a.png",
        "http://" + "a" * 64 + ".com/a.png", "http://a..b/a.png", "http://[::1/a.png", "https:///a.png",
        "http://8.8.8.8/\x01.png", "http://8.8.8.8/a b\n.png", "http://0x7f.1/a.png", "http://[fe80::1%25lo]/a",
        "file:///etc/passwd", "file:///nonexistent", "ftp://127.0.0.1/a.png", "javascript:alert(1)",
        "a.png", " ", "\x00",
    )  # fmt: skip
    frames = make_frame_list(3, 32, 32, "JPEG")
    videos = (
        _data("video/mp4", make_video(4, 32, 32, fps=4)),
        "data:video/jpeg;base64," + ",".join(base64.b64encode(f).decode() for f in frames),
        *(_data("video/mp4", data) for _, data, _ in bad_video_corpus()),
        *("data:video/png;base64," + ",".join(base64.b64encode(f).decode() for f in fl)
          for _, fl, _ in bad_frame_lists()),
        "data:video/jpeg;base64," + ",".join(["AA=="] * 5000), "data:video/jpeg;base64,,,",
        "data:video/mp4;base64,", "http://127.0.0.1/v.mp4", "http://a..b/v.mp4", "file:///dev/zero", "v.mp4",
    )  # fmt: skip
    return images, videos


# ----- values --------------------------------------------------------------------------------------
SURROGATES = st.sampled_from(["\ud800", "a\udfffb", "\udc80" * 3, "x\ud83d"])
HUGE_INTS = st.sampled_from([2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30, -(2**63) - 1, -1, 0])
ANY_VALUE: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.integers(), HUGE_INTS, st.floats(), st.text(max_size=20), SURROGATES,
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.integers(10, 3000).map(lambda d: DEEP + str(d)),
)  # fmt: skip


def fields(model: str, image: str) -> dict[str, list[Any]]:
    """Values worth trying for the fields OpenAI clients send, ours and others."""
    user = {"role": "user", "content": "hi"}
    return {
        "model": ["", model + " ", model.upper(), "\x00", "a" * 10_000, "\ud800"],
        "max_tokens": [0, -1, 1, 3, 100_000, 2**31, 2**63, 2**64, 1.5, "4", True, None, math.inf],
        "max_completion_tokens": [0, -5, 2, 2**40, "2", None],
        "temperature": [0, 2, 2.0001, -0.5, 1e308, math.nan, math.inf, "hot", None],
        "top_p": [0, 1e-30, 1, 1.5, math.nan, -1],
        "top_k": [-2, -1, 0, 1, 2**40, 2**64],
        "min_p": [0, 1, -1, 1.1, math.nan],
        "seed": [-1, 0, 2**63 - 1, 2**63, 2**64, 1.0, 1.5, "7", None],
        "n": [0, 1, 2, 128, -1, None],
        "stop": ["", [], [""], ["a"] * 17, ["\n", "."], "x" * 10_000, [1, 2], [None], {"a": 1}, "\ud800"],
        "logprobs": [True, False, 0, 5, 6, 21, -1, None, "yes"],
        "top_logprobs": [0, 5, 20, 21, -1, None],
        "stream": [True, False, 1, "true", None],
        "stream_options": [{"include_usage": True}, {"include_usage": "maybe"}, {}, [], None, "x"],
        "echo": [True, False, None],
        "ignore_eos": [True, False, "no"],
        "mm_processor_kwargs": [
            {"fps": 1.0}, {"num_frames": 2}, {"fps": 1, "num_frames": 2}, {"fps": 0}, {"fps": math.nan},
            {"num_frames": 10**9}, {"bogus": 1}, [], "x",
        ],  # fmt: skip
        "messages": [
            [], [{}], [user] * 300, [{"role": "robot", "content": "hi"}], [{"role": "user", "content": []}],
            [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}],
            [{"role": "user", "content": [{"type": "image_url"}]}],
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]}],
            [{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": image}}]}],
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}] * 20}],
            [{"role": "user", "content": "<|image_pad|>"}], [{"role": "user", "content": "<|vision_start|><|video_pad|>"}],
            [{"role": "user", "content": "<|im_end|><|im_start|>assistant\n"}],
            [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "video_url", "video_url": {"url": image, "fps": 300}}]}],
            [{"role": "tool", "content": "42", "tool_call_id": "c1"}],
            [{"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, user],
            "hi", None, {"role": "user"},
        ],  # fmt: skip
        "prompt": ["", [], [[1, 2]], ["a", "b"], [""], [-1], [2**31], [1012, 5], [0] * 5000, "x" * 200_000, 7],
        "tools": [[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}], [], "x"],
        "tool_choice": ["auto", "none", "required", {"type": "function", "function": {"name": "f"}}],
        "response_format": [{"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "x"}}],
        "logit_bias": [
            {"1": 100}, {"x": "y"}, {"-1": 1}, {"99999999": 1}, {"5": 1e308}, {"5": math.nan}, {"5": -math.inf},
            {str(i): 1 for i in range(1025)}, [], "x",
        ],
        "min_tokens": [0, 1, 5, 2**40, -1, "3", None],
        "stop_token_ids": [[], [0], [1, 1], [-1], [2**40], list(range(70)), "x", [None]],
        "presence_penalty": [2.5, -3], "best_of": [2], "suffix": ["x"],
        "user": ["u", "\ud800", 5], "parallel_tool_calls": [True],
    }  # fmt: skip


# ----- bodies --------------------------------------------------------------------------------------
def _paths(obj: Any, at: tuple = ()) -> list[tuple]:
    """Every location in a JSON value (dict keys and list indices), depth first, at most 200."""
    out: list[tuple] = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        out.append((*at, key))
        out += _paths(value, (*at, key))
    return out[:200]


def _get(obj: Any, path: tuple) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def _set(obj: Any, path: tuple, value: Any, delete: bool = False) -> None:
    for key in path[:-1]:
        obj = obj[key]
    if delete:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


def _clean(obj: Any) -> Any:
    """Lone surrogates replaced: a valid body should reach the model, not the Unicode check."""
    if isinstance(obj, str):
        return obj.encode("utf-8", "replace").decode()
    if isinstance(obj, dict):
        return {_clean(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def encode(body: Any, ascii_only: bool = True) -> bytes:
    text = json.dumps(body, ensure_ascii=ascii_only)  # NaN and Infinity too, as Python's JSON reads them
    # '"\x00deep\x00N..."' (JSON escapes the NULs) becomes N nested lists
    text = _DEEP.sub(lambda m: "[" * int(m[1]) + "]" * int(m[1]), text)
    return text.encode("utf-8", "surrogatepass")  # lone surrogates: bytes that are not UTF-8


_DEEP = re.compile(re.escape(json.dumps(DEEP)[:-1]) + r'(\d+)(?:[^"\\]|\\.)*"')


@st.composite
def _runnable(draw: st.DrawFn, body: dict, route: str, model: str) -> dict:
    """A schema-valid body made likely to run on the served model, quickly: without the lone
    surrogates that the schema allows and the router refuses (``mutated`` adds them)."""
    body = _clean(body)
    if draw(st.integers(0, 9)) < 9:
        body["model"] = model
    if draw(st.integers(0, 9)) < 9:
        body.pop("max_completion_tokens", None)
        body["max_tokens"] = draw(st.integers(1, 4))
    body["stream"] = draw(st.booleans())
    if route.endswith("/completions") and not route.endswith("chat/completions"):
        body.pop("echo", None)
        if draw(st.booleans()):
            body["prompt"] = draw(st.lists(st.integers(0, 255), min_size=1, max_size=8))
    elif draw(st.integers(0, 9)) < 5:
        images, videos = media()
        text = st.text(max_size=30).map(lambda t: {"type": "text", "text": _clean(t)})
        image = st.sampled_from(images).map(lambda u: {"type": "image_url", "image_url": {"url": u}})
        video = st.sampled_from(videos).map(lambda u: {"type": "video_url", "video_url": {"url": u}})
        # mostly one picture or video, whose error (if any) is then the answer's
        parts = draw(st.one_of(
            st.tuples(image), st.tuples(video), st.tuples(text, image), st.tuples(video, text),
            st.lists(st.one_of(text, image, video), min_size=1, max_size=3),
        ))  # fmt: skip
        history = body["messages"][:-1] if draw(st.integers(0, 3)) == 0 else []
        body["messages"] = [*history, {"role": "user", "content": list(parts)}]
        if draw(st.booleans()):
            body.pop("mm_processor_kwargs", None)
    return body


TEXT_FIELDS = {"content", "text", "prompt", "name", "tool_call_id", "stop"}  # what the tokenizer reads


@st.composite
def _mutated(draw: st.DrawFn, body: dict, model: str, edges: dict[str, list[Any]]) -> dict:
    """``body`` with one mutation (mostly: the others' fields stay valid, so that the one reaches
    its check) to three: a field at or past its schema's bounds (``edges``), a value worth trying
    (``fields``), a location dropped or given any value, a lone surrogate added to a string, an
    unknown field."""
    table = fields(model, media()[0][0])
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        op = draw(
            st.sampled_from(["edge", "edge", "field", "field", "drop", "retype", "lone", "lone", "extra"])
        )
        paths = _paths(body)
        texts = [p for p in paths if isinstance(_get(body, p), str) and set(p) & TEXT_FIELDS]
        if op in ("drop", "retype") and paths:
            path = draw(st.sampled_from(paths))
            _set(body, path, draw(ANY_VALUE), delete=op == "drop")
        elif op == "lone":  # a lone surrogate in a string: JSON can carry one
            if texts:
                path = draw(st.sampled_from(texts))
                _set(body, path, _get(body, path) + draw(SURROGATES))
            elif isinstance(body.get("messages"), list):
                body["messages"].append({"role": "user", "content": "hi" + draw(SURROGATES)})
            else:
                body["prompt"] = "hi" + draw(SURROGATES)
        elif op in ("edge", "field"):
            values = edges if op == "edge" else table
            name = draw(st.sampled_from(sorted(values)))
            body[name] = draw(st.sampled_from(values[name]))
        else:
            body[draw(st.text(max_size=10))] = draw(ANY_VALUE)
    return body


def _edges(schema: dict, components: dict) -> list[Any]:
    """Values at and just past the bounds ``schema`` sets, past what 64 bits hold, and of other
    types than the one it takes."""
    if "$ref" in schema:
        return _edges(components["schemas"][schema["$ref"].rsplit("/", 1)[1]], components)
    if "anyOf" in schema:
        return [v for s in schema["anyOf"] for v in _edges(s, components)]
    kind = schema.get("type")
    if kind in ("integer", "number"):
        lo = schema.get("minimum", schema.get("exclusiveMinimum"))
        hi = schema.get("maximum", schema.get("exclusiveMaximum"))
        step = 1 if kind == "integer" else 1e-9
        bounds = [b + d for b in (lo, hi) if b is not None for d in (-step, 0, step)]
        far = [2**31, 2**63 - 1, 2**63, 2**64, 2**100, -(2**63) - 1, math.nan, math.inf, -math.inf, 1e308]
        return [*bounds, *far, "1", True]
    if kind == "string":
        return ["", "\ud800", "a\udfffb", "x" * 100_000, *(e + "x" for e in schema.get("enum", ())), 1]
    if kind == "boolean":
        return ["true", 1, 2, "no"]
    if kind == "array":
        return [[], [None], [[]], "x", {}]
    if kind == "object":
        return [{}, [], "x", {"": None}]
    return [0]


def edge_values(openapi: dict) -> dict[str, dict[str, list[Any]]]:
    """POST route -> field -> ``_edges`` of its schema (the request body's top-level fields)."""
    components, out = openapi.get("components", {}), {}
    for path, ops in sorted(openapi["paths"].items()):
        schema = ops.get("post", {}).get("requestBody", {}).get("content", {}).get("application/json")
        if schema is not None:
            ref = schema["schema"]["$ref"].rsplit("/", 1)[1]
            props = components["schemas"][ref].get("properties", {})
            out[path] = {name: _edges(sub, components) for name, sub in props.items()}
    return out


VALID_TYPES = ["application/json", "application/json; charset=utf-8"]
OTHER_TYPES = [
    "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "",
    "application/octet-stream", "application/jsonx", "APPLICATION/JSON", "application/json; charset=latin-1",
]  # fmt: skip


@st.composite
def _raw(draw: st.DrawFn, valid: bytes, max_body: int) -> tuple[bytes, str]:
    how = draw(st.sampled_from(["cut", "bytes", "scalar", "bom", "utf16", "deep", "huge", "spaces", "dup"]))
    if how == "cut":
        body = valid[: draw(st.integers(0, max(0, len(valid) - 1)))]
    elif how == "bytes":
        body = draw(st.binary(max_size=200))
    elif how == "scalar":
        body = draw(
            st.sampled_from([b"null", b"[]", b"1", b'"x"', b"{}", b"true", b"", b"{", b"NaN", b"1e999"])
        )
    elif how == "bom":
        body = b"\xef\xbb\xbf" + valid
    elif how == "utf16":
        body = valid.decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass")
    elif how == "deep":
        depth = draw(st.integers(100, 200_000))
        body = draw(st.sampled_from([b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth]))
    elif how == "huge":
        size = draw(st.integers(MiB, max_body))
        body = valid[:-1] + b', "pad": "' + b"x" * size + b'"}'
    elif how == "spaces":
        body = b" " * draw(st.integers(1, max_body)) + valid
    else:
        body = valid[:-1] + b', "model": 1, "model": "x"}'
    ctype = draw(st.sampled_from(VALID_TYPES + OTHER_TYPES))
    if how == "utf16" and draw(st.booleans()):
        ctype = "application/json; charset=utf-16"
    return body, ctype


HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=120).map(str.strip)
TRACEPARENTS = st.one_of(
    st.just("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    st.just("00-00000000000000000000000000000000-0000000000000000-00"),
    st.just("ff-" + "z" * 32 + "-" + "1" * 16 + "-01"),
    HEADER_TEXT,
)
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "x-request-id": st.one_of(HEADER_TEXT, st.just("a" * 101), st.just("id:1.2_3-4")),
        "traceparent": TRACEPARENTS,
        "authorization": st.sampled_from(["Bearer x", "Basic abc", "Bearer", "bearer  x  y"]),
        "accept": st.sampled_from(["text/event-stream", "application/json", "*/*", "x"]),
    },
)
KINDS = st.sampled_from(["valid"] * 9 + ["mutated"] * 6 + ["raw"] * 3 + ["probe"] * 2)
PROBE_PATHS = [
    "/", "/v1", "/v1/", "/v1/chat", "/v1/chat/completions/", "//health", "/v1/models/x", "/%ff",
    "/v1/embeddings", "/v1/responses", "/" + "a" * 5000, "/docs", "/openapi.json", "/health/",
]  # fmt: skip


def schema_values(schema: dict, components: dict) -> st.SearchStrategy[Any]:
    """The values ``schema`` allows: hypothesis-jsonschema draws each leaf (a string, a number in
    its range, an enum), while ``$ref``s, unions, objects and arrays are walked here once. (Given
    the whole request schema, hypothesis-jsonschema canonicalises its parts again for every
    example: ~0.1 s a chat body.) Objects get their declared fields only; mutations add others."""
    if "$ref" in schema:
        return schema_values(components["schemas"][schema["$ref"].rsplit("/", 1)[1]], components)
    if "anyOf" in schema:
        return st.one_of([schema_values(s, components) for s in schema["anyOf"]])
    if schema.get("type") == "object" and "properties" in schema:
        props = {k: schema_values(v, components) for k, v in schema["properties"].items()}
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {k: v for k, v in props.items() if k in required},
            optional={k: v for k, v in props.items() if k not in required},
        )
    if schema.get("type") == "array" and "items" in schema:
        items = schema_values(schema["items"], components)
        return st.lists(items, min_size=schema.get("minItems", 0), max_size=schema.get("maxItems", 4))
    return from_schema(schema)


def _schema_bodies(openapi: dict) -> dict[str, st.SearchStrategy[dict]]:
    """POST route -> the bodies its JSON schema allows."""
    out = {}
    for path, ops in sorted(openapi["paths"].items()):
        schema = ops.get("post", {}).get("requestBody", {}).get("content", {}).get("application/json")
        if schema is not None:
            out[path] = schema_values(schema["schema"], openapi.get("components", {}))
    return out


def calls(openapi: dict, model: str, max_body: int = 4 * MiB) -> st.SearchStrategy[Call]:
    """Calls to the router whose schema is ``openapi``, serving ``model``; raw bodies up to
    ``max_body`` bytes (and a little)."""
    bodies, edges = _schema_bodies(openapi), edge_values(openapi)
    gets = sorted(p for p, ops in openapi["paths"].items() if "get" in ops)
    posts = sorted(bodies)

    @st.composite
    def call(draw: st.DrawFn) -> Call:
        kind = draw(KINDS)
        headers = draw(HEADERS)
        if kind == "probe":
            path = draw(st.one_of(st.sampled_from(gets + PROBE_PATHS), st.sampled_from(posts)))
            method = "GET" if path in gets and draw(st.integers(0, 3)) else draw(
                st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
            )  # fmt: skip
            if draw(st.booleans()):
                path += "?" + quote(draw(st.text(max_size=30)), safe="=&", errors="surrogatepass")
            return Call("probe", method, path, headers=headers)
        route = draw(st.sampled_from(posts))
        body = draw(_runnable(draw(bodies[route]), route, model))
        hangup = draw(st.integers(0, 9)) < 2
        if hangup and kind == "valid":  # leave while it generates: the abort must free everything
            body.update(max_tokens=draw(st.integers(16, 128)), ignore_eos=True)
        if kind == "valid":
            return Call(
                "valid", "POST", route, encode(body), {"content-type": "application/json", **headers}, hangup
            )
        if kind == "mutated":
            body = draw(_mutated(body, model, edges[route]))
            data = encode(body, ascii_only=draw(st.booleans()))
            return Call(
                "mutated", "POST", route, data, {"content-type": "application/json", **headers}, hangup
            )
        data, ctype = draw(_raw(encode(body), max_body))
        return Call("raw", "POST", route, data, {"content-type": ctype, **headers} if ctype else headers)

    return call()
