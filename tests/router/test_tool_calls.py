"""Tool calls: the ``<tool_call>`` parser (``router.tool_calls``), what a request with tools may ask
and how its prompt is rendered (``router.protocol``, ``router.prepare``), and the answers through the
router's HTTP app to the official client, streamed and not (a ``Scripted`` backend writes them)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest
from pydantic import ValidationError
from transformers import AutoTokenizer

from router.api.app import create_app
from router.config import RouterConfig
from router.images import FetchLimits
from router.jobs import Event
from router.prepare import Preparer
from router.protocol import APIError, ChatCompletionRequest
from router.tool_calls import ToolCallParser, parse_answer
from shared.wire.messages import FinishReason
from tests.router.scripted import DEMO, Scripted, demo_tokenizer

pytestmark = pytest.mark.unit

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>'
ANSWERS = [
    "no call at all, trailing space kept \n",
    "Let me look.\n\n" + CALL,
    CALL + "\n" + CALL.replace("Zürich", "Bern") + "\n",
    "text <tool_call>not json</tool_call> and more",
    'text\n<tool_call>\n{"arguments": {}}\n</tool_call>',  # no name: not a call
    'cut short <tool_call>\n{"name": "get_weather", "argu',
    "ends like a tag <tool_ca",
    '<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call> after',
]


def pushed(
    text: str, cuts: list[int], max_calls: int | None = None
) -> tuple[str, list[tuple[str, str]], int]:
    """Content, (name, arguments) of the calls and calls made, pushing ``text`` cut at ``cuts``."""
    p, content, calls = ToolCallParser(max_calls), "", []
    for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True):
        got = p.push(text[a:b])
        content, calls = content + got.content, calls + got.calls
    last = p.finish()
    content, calls = content + last.content, calls + last.calls
    assert [c["index"] for c in calls] == list(range(len(calls)))
    return content, [(c["function"]["name"], c["function"]["arguments"]) for c in calls], p.calls


@pytest.mark.parametrize("text", ANSWERS)
def test_every_split_of_an_answer_parses_as_the_whole(text: str):
    content, calls = parse_answer(text)
    whole = (content or "", [(c["function"]["name"], c["function"]["arguments"]) for c in calls])
    for cut in range(len(text) + 1):
        assert pushed(text, [cut])[:2] == whole, cut
    assert pushed(text, list(range(1, len(text))))[:2] == whole  # a character at a time


def test_what_an_answer_gives():
    assert parse_answer(ANSWERS[0]) == (ANSWERS[0], [])  # no call: the text, untouched
    content, calls = parse_answer(ANSWERS[1])
    assert content == "Let me look." and len(calls) == 1
    assert calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Zürich"}'}
    content, calls = parse_answer(ANSWERS[2])
    assert content is None and [json.loads(c["function"]["arguments"])["city"] for c in calls] == [
        "Zürich",
        "Bern",
    ]
    assert len({c["id"] for c in calls}) == 2
    for text in ANSWERS[3:7]:  # not a call, or never closed: the text as the model wrote it
        assert parse_answer(text) == (text, [])
    content, calls = parse_answer(ANSWERS[7])
    assert content == "after" and calls[0]["function"] == {
        "name": "f",
        "arguments": '{"a": 1}',
    }  # a string: as is


def test_parallel_tool_calls_false_keeps_the_first_call():
    content, calls, made = pushed(ANSWERS[2], [40], max_calls=1)
    assert content == "" and made == 1 and [json.loads(a)["city"] for _, a in calls] == ["Zürich"]


def chat_request(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "demo", "messages": [{"role": "user", "content": "Weather in Zürich?"}], **fields}
    )


def test_what_a_request_with_tools_may_ask():
    assert chat_request(tools=[WEATHER]).calls_tools()  # "auto" by default with tools
    assert chat_request(tools=[WEATHER], tool_choice="auto").calls_tools()
    assert not chat_request(tools=[WEATHER], tool_choice="none").calls_tools()
    assert not chat_request().calls_tools() and not chat_request(tool_choice="auto").calls_tools()
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice in ("required", named):  # shown and parsed; the answer held to calls (router.structured)
        assert chat_request(tools=[WEATHER], tool_choice=choice).calls_tools()
    for bad in ({"type": "retrieval"}, {"type": "function", "function": {"name": "has space"}}):
        with pytest.raises(ValidationError):
            chat_request(tools=[bad])


@pytest.fixture(scope="module")
def preparer() -> Preparer:
    return Preparer(DEMO, "demo", None, 4, FetchLimits())


CONVERSATION = [
    {"role": "user", "content": "Weather in Zürich?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "12 C, light rain"},
]


def prompt_ids(preparer: Preparer, **fields: Any) -> list[int]:
    async def go() -> list[int]:
        async with httpx.AsyncClient() as client:
            prepared = await preparer.chat(chat_request(**fields), client)
        return prepared.prompt_ids

    return asyncio.run(go())


def test_the_prompt_shows_the_tools_and_the_earlier_calls_as_the_template_does(preparer: Preparer):
    """The prompt is transformers' rendering of the same OpenAI messages and tools (the checkpoint's
    own template): the tools, the assistant's call and the tool's answer all in it."""
    reference = AutoTokenizer.from_pretrained(DEMO)
    ids = prompt_ids(preparer, messages=CONVERSATION, tools=[WEATHER])
    expected = reference.apply_chat_template(
        CONVERSATION, tools=[WEATHER], add_generation_prompt=True, tokenize=False
    )
    assert ids == reference(expected, add_special_tokens=False)["input_ids"]
    text = reference.decode(ids)
    assert json.dumps(WEATHER, ensure_ascii=False) in text and '"name": "get_weather"' in text
    assert (
        '"arguments": {"city": "Zürich"}' in text
        and "<tool_response>\n12 C, light rain\n</tool_response>" in text
    )
    # tool_choice "none": the tools are not shown (the earlier turns still are)
    hidden = prompt_ids(preparer, messages=CONVERSATION, tools=[WEATHER], tool_choice="none")
    assert hidden == prompt_ids(preparer, messages=CONVERSATION) != ids


def test_tool_calls_only_in_assistant_messages(preparer: Preparer):
    bad = [{"role": "user", "content": "hi", "tool_calls": CONVERSATION[1]["tool_calls"]}]
    with pytest.raises(APIError) as e:
        prompt_ids(preparer, messages=bad)
    assert e.value.status == 400 and e.value.param == "messages[0]"


# ----- through the HTTP app and the official client ---------------------------------------------
EOS = 514  # the demo's <|im_end|>


class Ready:
    def ready(self, now: float) -> dict[str, bool]:
        return {"scripted": True}


async def answer(preparer: Preparer, text: str, stream: bool, **fields: Any) -> Any:
    """The client's answer to a chat request with tools, the model's tokens being ``text`` + EOS."""
    backend = Scripted()
    app = create_app(RouterConfig(), Ready(), backend, preparer)
    async with (
        httpx.AsyncClient() as fetch,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://router") as http,
    ):
        app.state.http = fetch
        client = openai.AsyncOpenAI(base_url="http://router/v1", api_key="-", http_client=http, max_retries=0)
        asking = asyncio.ensure_future(
            client.chat.completions.create(
                model="demo",
                messages=[{"role": "user", "content": "Weather?"}],
                tools=[WEATHER],
                stream=stream,
                **fields,
            )  # fmt: skip
        )
        while not backend.jobs:
            await asyncio.sleep(0.01)
        job = backend.jobs[0]
        for tok in demo_tokenizer().encode(text, add_special_tokens=False):
            job.sink(Event(tokens=[(tok, None)]))
        job.sink(Event(tokens=[(EOS, None)], finish=FinishReason.STOP))
        out = await asking
        return [chunk async for chunk in out] if stream else out


def streamed(chunks: list[Any]) -> tuple[str | None, list[dict[str, Any]], str | None]:
    """Content, tool calls (merged by index, as clients merge them) and finish reason of a stream."""
    content, calls, finish = "", {}, None
    for c in chunks:
        for ch in c.choices:
            content += ch.delta.content or ""
            for tc in ch.delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += tc.id or ""
                call["name"] += tc.function.name or ""
                call["arguments"] += tc.function.arguments or ""
            finish = ch.finish_reason or finish
    return content or None, [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize("text", [ANSWERS[1], ANSWERS[2], ANSWERS[0], ANSWERS[5]])
def test_the_client_gets_the_calls_streamed_and_not(preparer: Preparer, text: str):
    whole = asyncio.run(answer(preparer, text, stream=False))
    chunks = asyncio.run(answer(preparer, text, stream=True))
    content, calls = parse_answer(text)
    message = whole.choices[0].message
    assert message.content == content
    got = [(c.function.name, c.function.arguments) for c in message.tool_calls or []]
    assert got == [(c["function"]["name"], c["function"]["arguments"]) for c in calls]
    assert whole.choices[0].finish_reason == ("tool_calls" if calls else "stop")
    s_content, s_calls, s_finish = streamed(chunks)
    assert (s_content or None) == (content or None) and s_finish == whole.choices[0].finish_reason
    assert [(c["name"], c["arguments"]) for c in s_calls] == got
    assert all(c["id"].startswith("call_") for c in s_calls)


def test_without_parallel_calls_the_answer_holds_one(preparer: Preparer):
    whole = asyncio.run(answer(preparer, ANSWERS[2], stream=False, parallel_tool_calls=False))
    assert [json.loads(c.function.arguments)["city"] for c in whole.choices[0].message.tool_calls] == [
        "Zürich"
    ]
