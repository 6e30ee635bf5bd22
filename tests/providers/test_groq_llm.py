"""The Groq LLM: the real groq SDK streaming from a local fake Groq server, through the guard."""

from __future__ import annotations

import gc
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator

import httpcore
import httpx
import pytest

from scripts.fakes.groq_llm import (
    ErrorReply,
    FakeGroqLlm,
    TextReply,
    ToolCallReply,
    start_fake_groq_llm,
)
from shared.providers import groq_client
from shared.providers.groq_client import PlainPollBackend, ShardedTransport
from shared.providers.llm.base import (
    AgentContext,
    ChatMessage,
    KnowledgeItem,
    LlmEvent,
    LlmEventKind,
)
from shared.providers.llm.groq import (
    DEFAULT_MODEL,
    GroqLlm,
    LlmError,
    LlmStreamError,
    _chunks,
)
from shared.realtime import pace_reads
from shared.resilience import ProviderUnavailable, guard
from tests.conftest import poll_until

API_KEY = "gsk_test_key"
TRANSFER_TO = "+14155550100"
CONTEXT = AgentContext(
    persona="You are Sam, the receptionist of Acme Dental.",
    greeting="Hi, thanks for calling Acme Dental. How can I help?",
    closing="Thanks for calling Acme Dental, goodbye!",
    knowledge=(KnowledgeItem("What are your opening hours?", "Nine to five, Monday to Friday."),),
    customer_name="Ada",
    is_returning_customer=True,
    memories=("Asked about teeth whitening prices.",),
    insights="Callers like hearing the price first.",
)
HISTORY = [
    ChatMessage("assistant", "Hi, thanks for calling Acme Dental. How can I help?"),
    ChatMessage("user", "When are you open?"),
]


@pytest.fixture
def fake() -> Iterator[FakeGroqLlm]:
    server = start_fake_groq_llm(API_KEY)
    yield server
    server.stop()


@pytest.fixture
def llm(fake: FakeGroqLlm) -> GroqLlm:
    return GroqLlm(API_KEY, fake.url)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The guard's waits between attempts, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(guard("groq"), "sleep", recorded.append)
    return recorded


def text_of(events: list[LlmEvent]) -> str:
    return "".join(e.text for e in events if e.kind is LlmEventKind.TOKEN)


def test_the_request_streams_the_conversation_after_a_short_voice_prompt(
    fake: FakeGroqLlm, llm: GroqLlm
) -> None:
    list(llm.stream(CONTEXT, HISTORY))

    body = fake.bodies()[0]
    assert fake.requests[0].headers["authorization"] == f"Bearer {API_KEY}"
    assert fake.requests[0].headers["content-type"] == "application/json"
    assert body["model"] == DEFAULT_MODEL == "llama-3.3-70b-versatile"
    assert body["stream"] is True
    assert body["tool_choice"] == "auto"
    assert body["max_completion_tokens"] == 200
    assert body["messages"][1:] == [
        {"role": "assistant", "content": HISTORY[0].content},
        {"role": "user", "content": "When are you open?"},
    ]
    system = body["messages"][0]
    assert system["role"] == "system"
    for expected in (
        CONTEXT.persona,
        "Q: What are your opening hours? A: Nine to five, Monday to Friday.",
        "Ada, a returning customer",
        "- Asked about teeth whitening prices.",
        "Suggested approach: Callers like hearing the price first.",
        "no markdown",
        CONTEXT.closing,
    ):
        assert expected in system["content"]
    assert len(system["content"]) < 1500  # time to first token grows with the prompt


def test_transfer_is_offered_only_when_the_agent_has_a_transfer_number(
    fake: FakeGroqLlm, llm: GroqLlm
) -> None:
    list(llm.stream(CONTEXT, HISTORY))
    list(llm.stream(AgentContext(**{**CONTEXT.__dict__, "transfer_number": TRANSFER_TO}), HISTORY))

    without, with_number = ([t["function"] for t in b["tools"]] for b in fake.bodies())
    assert [t["name"] for t in without] == ["end_call"]
    assert [t["name"] for t in with_number] == ["end_call", "transfer_call"]
    assert with_number[1]["parameters"]["properties"]["to"]["enum"] == [TRANSFER_TO]
    assert with_number[1]["parameters"]["required"] == ["to"]


def test_tokens_arrive_in_order_while_the_server_is_still_streaming(
    fake: FakeGroqLlm, llm: GroqLlm
) -> None:
    fake.script(TextReply("Sure. We open at nine, and close at 5.30 pm.", 100, 30))

    started = time.monotonic()
    arrivals: list[tuple[float, LlmEvent]] = [
        (time.monotonic() - started, e) for e in llm.stream(CONTEXT, HISTORY)
    ]

    events = [e for _, e in arrivals]
    assert text_of(events) == "Sure. We open at nine, and close at 5.30 pm."
    assert [e.text for e in events[:3]] == ["Sure", ".", " We"]
    assert events[-1].kind is LlmEventKind.DONE
    first, last = arrivals[0][0], arrivals[-1][0]
    assert 0.1 <= first < 0.5
    assert last - first >= 0.3  # tokens spread over the stream, not buffered to the end


def test_a_tool_call_streamed_in_fragments_is_assembled_after_the_spoken_text(
    fake: FakeGroqLlm, llm: GroqLlm
) -> None:
    arguments = '{"reason": "caller said goodbye"}'
    fake.script(ToolCallReply("end_call", arguments, text="Goodbye!", fragments=4))

    events = list(llm.stream(CONTEXT, HISTORY))

    assert text_of(events) == "Goodbye!"
    assert [e.kind for e in events[-2:]] == [LlmEventKind.TOOL_CALL, LlmEventKind.DONE]
    assert events[-2].tool == "end_call"
    assert events[-2].arguments == {"reason": "caller said goodbye"}


def test_malformed_tool_arguments_become_empty_with_a_warning(
    fake: FakeGroqLlm, llm: GroqLlm, caplog: pytest.LogCaptureFixture
) -> None:
    fake.script(ToolCallReply("end_call", '{"reason": "bye'))

    with caplog.at_level(logging.WARNING, "shared.providers.llm.groq"):
        events = list(llm.stream(CONTEXT, HISTORY))

    assert events[-2] == LlmEvent(LlmEventKind.TOOL_CALL, tool="end_call", arguments={})
    assert "malformed arguments" in caplog.text


def test_a_transfer_goes_only_to_the_configured_number_and_only_when_offered(
    fake: FakeGroqLlm, llm: GroqLlm
) -> None:
    context = AgentContext(**{**CONTEXT.__dict__, "transfer_number": TRANSFER_TO})
    fake.script(
        ToolCallReply("transfer_call", '{"to": "+19005550199"}'),
        ToolCallReply("transfer_call", '{"to": "+19005550199"}'),
    )

    redirected = list(llm.stream(context, HISTORY))
    not_offered = list(llm.stream(CONTEXT, HISTORY))

    assert redirected[-2].arguments == {"to": TRANSFER_TO}
    assert [e.kind for e in not_offered] == [LlmEventKind.DONE]


def test_closing_the_stream_early_aborts_the_server_response(
    fake: FakeGroqLlm, llm: GroqLlm
) -> None:
    fake.script(TextReply("word " * 200, token_interval_ms=10))

    stream = llm.stream(CONTEXT, HISTORY)
    assert next(stream).text == "word"
    stream.close()

    assert fake.wait_aborted(1, timeout=2.0)


def test_streams_run_concurrently_and_reuse_a_kept_alive_connection(
    fake: FakeGroqLlm, llm: GroqLlm
) -> None:
    list(llm.stream(CONTEXT, HISTORY))
    list(llm.stream(CONTEXT, HISTORY))
    assert fake.connections == 1

    fake.script(*[TextReply("one two three four five", 0, 40) for _ in range(3)])
    spans: list[tuple[float, float, str]] = []

    def converse() -> None:
        events = llm.stream(CONTEXT, HISTORY)
        first = next(events)
        first_at = time.monotonic()
        rest = list(events)
        spans.append((first_at, time.monotonic(), text_of([first, *rest])))

    threads = [threading.Thread(target=converse) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert [text for _, _, text in spans] == ["one two three four five"] * 3
    assert max(first for first, _, _ in spans) < min(end for _, end, _ in spans)


def test_connections_stay_open_for_as_many_replies_as_stream_at_once(
    fake: FakeGroqLlm, llm: GroqLlm
) -> None:
    """40 replies at once, twice: the second round reuses the first round's 40 connections
    (the SDK's default pool keeps only 20, and would open 20 new ones)."""
    streams = 40

    def round_of_replies() -> None:
        together = threading.Barrier(streams, timeout=30)
        texts: list[str] = []

        def converse() -> None:
            events = llm.stream(CONTEXT, HISTORY)
            first = next(events)
            together.wait()  # every reply holds its connection at the same time
            texts.append(text_of([first, *events]))

        threads = [threading.Thread(target=converse) for _ in range(streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert texts == ["one two"] * streams

    fake.script(*[TextReply("one two", 0, 0) for _ in range(2 * streams)])
    round_of_replies()
    assert fake.connections == streams
    round_of_replies()
    assert fake.connections == streams


def test_idle_connections_are_checked_without_gevents_poll(
    fake: FakeGroqLlm, llm: GroqLlm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """httpcore asks each idle connection whether the server closed it, before and after
    every request, through `select.poll` (gevent's own in the voice process, ~20 times the
    cost): the pool's backend answers with the plain one."""
    streams = 4
    fake.script(*[TextReply("one two", 0, 0) for _ in range(streams + 2)])
    together = threading.Barrier(streams, timeout=30)

    def converse() -> None:
        events = llm.stream(CONTEXT, HISTORY)
        next(events)
        together.wait()
        list(events)

    threads = [threading.Thread(target=converse) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    polls: list[object] = []
    patched = select.poll
    monkeypatch.setattr(select, "poll", lambda: polls.append(1) or patched())

    assert text_of(list(llm.stream(CONTEXT, HISTORY))) == "one two"
    assert text_of(list(llm.stream(CONTEXT, HISTORY))) == "one two"
    assert polls == []
    assert fake.connections == streams  # the idle ones were found alive and reused


def test_a_paced_reply_takes_the_tokens_that_came_during_a_pause_in_one_read(
    fake: FakeGroqLlm, llm: GroqLlm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the reader paces its reads (the responder does after a reply's first
    sentence), a socket read takes every token that came since the last: the same text in
    a fraction of the reads, each of which costs a wake-up in the voice process."""
    text = " ".join(f"word{i}" for i in range(30))
    fake.script(TextReply(text, 0, 10), TextReply(text, 0, 10))
    reads: list[int] = []
    read = groq_client._PlainPollStream.read

    def counted(
        self: groq_client._PlainPollStream, max_bytes: int, timeout: float | None = None
    ) -> bytes:
        reads.append(1)
        return read(self, max_bytes, timeout)

    monkeypatch.setattr(groq_client._PlainPollStream, "read", counted)
    assert text_of(list(llm.stream(CONTEXT, HISTORY))) == text
    unpaced = len(reads)

    reads.clear()
    events = llm.stream(CONTEXT, HISTORY)
    first = next(events)
    pace_reads(0.1)
    try:
        rest = list(events)
    finally:
        pace_reads(0)

    assert text_of([first, *rest]) == text
    assert unpaced >= 20  # a read per token or two as they come, 10 ms apart
    assert len(reads) <= unpaced / 3


def test_a_connection_the_server_closed_reads_as_readable() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        stream = PlainPollBackend(httpcore.SyncBackend()).connect_tcp("127.0.0.1", port)
        server_side, _ = listener.accept()
        assert stream.get_extra_info("is_readable") is False
        server_side.close()  # the server hangs up on an idle connection
        assert poll_until(lambda: stream.get_extra_info("is_readable") is True)
        stream.close()
        assert stream.get_extra_info("is_readable") is True


def test_a_finished_reply_leaves_nothing_for_the_garbage_collector(
    fake: FakeGroqLlm, llm: GroqLlm
) -> None:
    """Freed by reference counting when done, whole or cut short by a barge-in: in the voice
    process every collection walks what is left with every call's audio waiting."""

    def cut_short() -> None:
        events = llm.stream(CONTEXT, HISTORY)
        next(events)
        events.close()

    fake.script(*[TextReply("one two three", 0, 0) for _ in range(8)])
    list(llm.stream(CONTEXT, HISTORY))  # the connection and the SDK's lazy set-up
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds goes to gc.garbage
    try:
        for _ in range(3):
            list(llm.stream(CONTEXT, HISTORY))
            cut_short()
        gc.collect()
        # (other tests' fakes may end meanwhile: only the HTTP client's objects count)
        clients = ("httpx", "httpcore", "h11", "groq")
        left = [type(o).__qualname__ for o in gc.garbage if type(o).__module__.startswith(clients)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == []


def test_a_finished_reply_is_freed_without_the_garbage_collector(
    fake: FakeGroqLlm, llm: GroqLlm
) -> None:
    """Nothing of a finished reply waits for a collection: with the collector off, no HTTP
    response outlives its reply (an SDK `Stream` left unread did: a middle collection at 80
    calls then walked ~240 finished requests, 20-30 ms with every call's audio waiting)."""
    fake.script(*[TextReply("one two three", 0, 0) for _ in range(7)])
    list(llm.stream(CONTEXT, HISTORY))  # the connection and the SDK's lazy set-up
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            list(llm.stream(CONTEXT, HISTORY))
            events = llm.stream(CONTEXT, HISTORY)
            next(events)
            events.close()
        alive = sum(1 for o in gc.get_objects() if isinstance(o, httpx.Response))
    finally:
        gc.enable()
    assert alive == 0


def test_a_rate_limit_with_retry_after_is_retried_when_opening(
    fake: FakeGroqLlm, llm: GroqLlm, waits: list[float]
) -> None:
    fake.script(ErrorReply(429, "Rate limit reached", retry_after="1"), TextReply("Hello."))

    events = list(llm.stream(CONTEXT, HISTORY))

    assert text_of(events) == "Hello."
    assert waits == [1.0]
    assert len(fake.bodies()) == 2


def test_server_errors_that_persist_make_the_provider_unavailable(
    fake: FakeGroqLlm, llm: GroqLlm, waits: list[float]
) -> None:
    fake.script(*[ErrorReply(500, "internal")] * 3)

    # Groq is on the live call path: it gets the fail-fast policy (2 tries), then the
    # loop falls back to the local agent.
    with pytest.raises(ProviderUnavailable, match="groq unavailable: 2 attempts failed"):
        list(llm.stream(CONTEXT, HISTORY))
    assert len(waits) == 1


@pytest.mark.parametrize(
    ("reply", "key", "message"),
    [
        (
            ErrorReply(400, "tool_use_failed"),
            API_KEY,
            "groq refused the request: 400 tool_use_failed",
        ),
        (None, "gsk_wrong", "groq refused the request: 401 Invalid API Key"),
    ],
)
def test_a_refused_request_is_not_retried_and_says_why(
    fake: FakeGroqLlm, waits: list[float], reply: ErrorReply | None, key: str, message: str
) -> None:
    if reply:
        fake.script(reply)

    with pytest.raises(LlmError, match=message):
        list(GroqLlm(key, fake.url).stream(CONTEXT, HISTORY))
    assert waits == []
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    "reply",
    [
        TextReply("We open at nine tomorrow.", error_after_tokens=2),
        TextReply("We open at nine tomorrow.", cut_after_tokens=2),
    ],
    ids=["error event", "dropped connection"],
)
def test_a_reply_that_breaks_after_it_started_raises_a_stream_error(
    fake: FakeGroqLlm, llm: GroqLlm, reply: TextReply
) -> None:
    fake.script(reply)
    received: list[LlmEvent] = []

    with pytest.raises(LlmStreamError, match="groq stream broke after 2 tokens"):
        received.extend(llm.stream(CONTEXT, HISTORY))
    assert text_of(received) == "We open"
    assert len(fake.requests) == 1


def test_server_sent_events_are_decoded_across_reads_and_line_endings() -> None:
    body = [
        b'data: {"a": 1}\n',
        b'\ndata: {"a"',
        b': 2}\r\n\r\n: a comment\nevent: ping\ndata: {"p": 1}\n\n',
        b'data: {"b":\ndata: 3}\n\nevent: error\ndata: {"error": {"message": "x"}}\n\n',
        b"data: [DONE]\n\n",
        b'data: {"after": 1}\n\n',
    ]
    response = httpx.Response(200, content=iter(body))

    # Named events other than errors carry no completion; data lines join with newlines;
    # nothing after [DONE] is yielded, but the body is read to its end (the connection's
    # reuse depends on it).
    assert list(_chunks(response)) == [{"a": 1}, {"a": 2}, {"b": 3}, {"error": {"message": "x"}}]
    assert response.is_closed


def test_an_event_that_is_not_json_is_a_stream_error() -> None:
    response = httpx.Response(200, content=iter([b'data: {"a": 1}\n\ndata: nope\n\n']))

    with pytest.raises(LlmStreamError, match="not JSON"):
        list(_chunks(response))


def test_requests_go_to_the_pool_with_the_fewest_open_responses_the_first_of_equals() -> None:
    # Why several pools: httpcore's pool walks its connections quadratically per request
    # (groq_client's docstring). A quiet process keeps to one pool and one connection.
    served: list[int] = []

    def pool(n: int) -> httpx.MockTransport:
        def handler(request: httpx.Request) -> httpx.Response:
            served.append(n)
            return httpx.Response(200, stream=httpx.ByteStream(b"data: [DONE]\n\n"))

        return httpx.MockTransport(handler)

    client = httpx.Client(transport=ShardedTransport([pool(n) for n in range(3)]))
    for _ in range(2):
        client.get("http://groq.test/")  # read and closed: its pool is free again
    held = [
        client.send(client.build_request("GET", "http://groq.test/"), stream=True) for _ in range(4)
    ]
    held[1].close()  # closed before its body was read
    client.get("http://groq.test/")
    for response in held:
        response.close()
    assert served == [0, 0, 0, 1, 2, 0, 1]
