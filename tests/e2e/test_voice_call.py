"""Calls through the real voice process (gunicorn + gevent + flask-sock) with the offline
providers: audio in, audio out, the agent's audio transcribed; barge-in; bad tokens; a
dropped socket; and a failing real provider that the call survives by falling back."""

from __future__ import annotations

import contextlib
import functools
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from scripts import processes
from scripts.fakes.listen import transcribe_ulaw
from scripts.fakes.telnyx_events import TelnyxSigner, call_payload, envelope
from scripts.fakes.telnyx_media import CallClosed, FakeTelnyxCall
from shared.config import Settings
from shared.db.models import Call, CallTurn
from shared.services import stream_tokens
from tests.api.test_resources import routed_agent
from tests.conftest import register_tenant
from tests.e2e.conftest import ROOT, start_gunicorn, wait_for

FIXTURES = ROOT / "tests" / "providers" / "fixtures"
QUESTION = (FIXTURES / "caller_when_open.ulaw").read_bytes()  # "When are you open on Saturday?"
KNOWLEDGE = [
    {
        "question": "When are you open on Saturday?",
        "answer": "On Saturdays we are open from nine in the morning until two in the afternoon.",
    },
    {
        "question": "Where are you located?",
        "answer": "We are at twelve Harbor Street, next to the old post office, with free parking behind the building.",
    },
]


# The Saturday answer's words as Whisper tiny may write them. Piper's synthesis is
# stochastic (VITS noise) and tiny.en sometimes mishears a word or three ("Once at our
# days we are open for mine in the morning until in the afternoon", 2026-11-27), so the
# check is half the answer's content words: the agent's other lines have at most two of
# them ("12", "$90"), and each `ask` hears one answer.
SATURDAY_ANSWER = (
    ("saturday",),
    ("open",),
    ("nine", "9"),
    ("morning",),
    ("two", "2"),
    ("afternoon",),
)


def heard_saturday_answer(transcript: str) -> bool:
    words = transcript.lower()
    return sum(any(form in words for form in forms) for forms in SATURDAY_ANSWER) >= 3


def start_voice(
    provider_env: dict[str, str], tmp: Path, **extra: str
) -> tuple[subprocess.Popen[bytes], int, Path]:
    offline = dict.fromkeys(
        ("GROQ_API_KEY", "DEEPGRAM_API_KEY", "CARTESIA_API_KEY", "GOOGLE_API_KEY"), ""
    )
    return start_gunicorn("voice", {**offline, **provider_env, **extra}, tmp, ready_timeout=120)


@pytest.fixture(scope="module")
def voice(provider_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    process, port, _ = start_voice(provider_env, tmp_path_factory.mktemp("voice"))
    yield port
    processes.stop(process, "voice")


NewCall = Callable[..., tuple[Call, str]]


@pytest.fixture
def new_call(
    web: FlaskClient,
    signer: TelnyxSigner,
    e2e_settings: Settings,
    e2e_sessions: sessionmaker[Session],
) -> NewCall:
    """An inbound call to a fresh tenant's agent (its fields overridable), answered through
    the webhooks: the call row and a stream token for it."""
    return functools.partial(answered_call, web, signer, e2e_settings, e2e_sessions)


def answered_call(
    web: FlaskClient,
    signer: TelnyxSigner,
    settings: Settings,
    sessions: sessionmaker[Session],
    **agent_fields: object,
) -> tuple[Call, str]:
    owner = register_tenant(web, f"Voice{uuid.uuid4().hex[:6]}")
    number = f"+1415555{uuid.uuid4().int % 10000:04d}"
    routed_agent(
        web,
        owner,
        number,
        **{
            "greeting": "Hello, thanks for calling Acme Dental.",
            "knowledge": KNOWLEDGE,
            **agent_fields,
        },
    )
    ccid = f"v3:voice-{uuid.uuid4().hex[:8]}"
    payload = call_payload(ccid, from_="+14155550999", to=number)
    for event in ("call.initiated", "call.answered"):
        body = envelope(event, payload)
        assert (
            web.post("/webhooks/telnyx", data=body, headers=signer.headers(body)).status_code == 200
        )
    with sessions() as session:
        call = session.scalars(select(Call).where(Call.telnyx_call_control_id == ccid)).one()
    token = stream_tokens.issue(
        settings.signing_key, stream_tokens.StreamGrant(call.id, call.organization_id)
    )
    return call, token


def media_url(port: int, token: str) -> str:
    return f"ws://127.0.0.1:{port}/media/telnyx?token={token}"


def wait_agent_quiet(phone: FakeTelnyxCall, quiet: float = 1.0, timeout: float = 30.0) -> None:
    """Until the agent's audio has played out and nothing new came for `quiet` seconds."""
    wait_for(
        lambda: len(phone.heard) > 0 and time.monotonic() - phone.playout_end > quiet,
        timeout,
        "the agent to finish speaking",
    )


def ask(phone: FakeTelnyxCall, question: bytes) -> str:
    """Say `question` once the agent is quiet; return its reply as the caller heard it."""
    wait_agent_quiet(phone)
    heard_before = len(phone.heard)
    phone.send_audio(question)
    wait_for(lambda: len(phone.heard) > heard_before, 20, "an answer")
    wait_agent_quiet(phone)
    return transcribe_ulaw(phone.heard[heard_before:])


def turns(sessions: sessionmaker[Session], call_id: uuid.UUID) -> list[CallTurn]:
    with sessions() as session:
        return list(
            session.scalars(
                select(CallTurn).where(CallTurn.call_id == call_id).order_by(CallTurn.seq)
            )
        )


def test_an_offline_call_greets_answers_from_knowledge_and_stores_its_turns(
    voice: int,
    e2e_sessions: sessionmaker[Session],
    tmp_path: Path,
    new_call: NewCall,
) -> None:
    call, token = new_call()
    with FakeTelnyxCall(
        media_url(voice, token), call_control_id=call.telnyx_call_control_id or ""
    ) as phone:
        phone.start_line()
        wait_agent_quiet(phone)
        greeting = transcribe_ulaw(phone.heard)
        heard_before = len(phone.heard)
        phone.send_audio(QUESTION)
        asked_at = time.monotonic()
        wait_for(lambda: len(phone.heard) > heard_before, 20, "an answer")
        wait_agent_quiet(phone)
        answer = transcribe_ulaw(phone.heard[heard_before:])
        phone.write_wav(tmp_path / "agent.wav")
        assert phone.underruns(min_gap=0.06) == []
        first_audio = phone.first_audio_after(asked_at)
        phone.stop()
    assert "thanks for calling" in greeting.lower()
    assert heard_saturday_answer(answer), answer
    assert first_audio is not None and first_audio > asked_at
    stored = wait_for(
        lambda: (t := turns(e2e_sessions, call.id)) and len(t) >= 3 and t, 10, "turns stored"
    )
    speakers = [t.speaker for t in stored]
    assert speakers[:3] == ["agent", "caller", "agent"]
    caller, reply = stored[1], stored[2]
    assert (
        "open" in caller.text.lower() and caller.sentiment is not None and caller.stt_ms is not None
    )
    assert "saturday" in reply.text.lower() and not reply.interrupted
    assert (
        reply.voice_to_voice_ms and reply.llm_ttft_ms is not None and reply.tts_ttfa_ms is not None
    )


def test_caller_speech_during_an_answer_cuts_it_off(
    voice: int,
    e2e_sessions: sessionmaker[Session],
    new_call: NewCall,
) -> None:
    long_greeting = (
        "Hello, thanks for calling Acme Dental. "
        + "We have three offices, and we are happy to help with cleanings, fillings, crowns, whitening and emergencies of every kind. "
        * 3
    )
    call, token = new_call(greeting=long_greeting)
    with FakeTelnyxCall(media_url(voice, token), call_control_id="v3:x") as phone:
        phone.start_line()
        wait_for(lambda: len(phone.heard) > 8000 * 2, 20, "two seconds of greeting")
        spoke_at = time.monotonic()
        phone.send_audio(QUESTION)
        cleared = phone.clear_latency(spoke_at)
        heard_when_cut = len(phone.heard)
        wait_for(lambda: len(phone.heard) > heard_when_cut, 20, "the answer to the interruption")
        wait_agent_quiet(phone)
        phone.stop()
    # Speech is detected ~100-200 ms after onset (VAD); the clear must follow at once.
    assert cleared is not None and cleared < 0.5, cleared
    stored = wait_for(
        lambda: (t := turns(e2e_sessions, call.id)) and len(t) >= 3 and t, 10, "turns stored"
    )
    greeting = stored[0]
    assert greeting.interrupted and 0 < len(greeting.text) < len(long_greeting) / 2


@pytest.mark.parametrize("case", ["garbage", "expired", "ended_call"])
def test_streams_without_a_valid_token_for_a_live_call_are_refused(
    case: str,
    voice: int,
    web: FlaskClient,
    signer: TelnyxSigner,
    e2e_sessions: sessionmaker[Session],
    new_call: NewCall,
) -> None:
    call, token = new_call()
    if case == "garbage":
        token = "not-a-token"
    elif case == "expired":
        token = stream_tokens.issue(
            "another-secret", stream_tokens.StreamGrant(call.id, call.organization_id)
        )
    else:
        body = envelope(
            "call.hangup",
            {
                **call_payload(call.telnyx_call_control_id or "", from_="+1", to="+1"),
                "hangup_cause": "normal_clearing",
            },
        )
        web.post("/webhooks/telnyx", data=body, headers=signer.headers(body))
    phone = FakeTelnyxCall(media_url(voice, token), call_control_id="v3:x")
    try:
        with contextlib.suppress(CallClosed):  # refused before `start` could even be sent
            phone.connect()
        assert phone.wait_closed(timeout=5)
        assert phone.heard == b""
    finally:
        phone.close()
    assert turns(e2e_sessions, call.id) == []


def test_a_compression_offer_is_declined_and_a_refusal_is_a_clean_close(voice: int) -> None:
    """websockets' client offers permessage-deflate by default; the voice process accepts
    the upgrade without it and closes a bad stream with 1008 and the reason."""
    from websockets.exceptions import ConnectionClosedError
    from websockets.sync.client import connect

    with connect(media_url(voice, "not-a-token")) as ws:
        assert "Sec-WebSocket-Extensions" in ws.request.headers
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
    assert closed.value.rcvd.reason == "invalid or expired stream token"


def test_a_socket_dropped_mid_answer_still_stores_the_call_so_far(
    voice: int,
    e2e_sessions: sessionmaker[Session],
    new_call: NewCall,
) -> None:
    call, token = new_call()
    phone = FakeTelnyxCall(media_url(voice, token), call_control_id="v3:x")
    phone.connect()
    phone.start_line()
    wait_for(lambda: len(phone.heard) > 4000, 20, "the greeting to start")
    phone.drop()
    stored = wait_for(lambda: turns(e2e_sessions, call.id), 10, "the greeting turn to be stored")
    assert stored[0].speaker == "agent" and stored[0].interrupted


def test_a_failing_real_llm_falls_back_to_the_local_agent_and_the_call_goes_on(
    provider_env: dict[str, str],
    tmp_path: Path,
    new_call: NewCall,
) -> None:
    from scripts.fakes.groq_llm import ErrorReply, start_fake_groq_llm

    fake = start_fake_groq_llm("gsk_test", lambda body: ErrorReply(500, "overloaded"))
    process, port, log_path = start_voice(
        provider_env,
        tmp_path,
        GROQ_API_KEY="gsk_test",
        GROQ_URL=fake.url,
        SENTIMENT_PROVIDER="local",
    )
    try:
        _, token = new_call()
        with FakeTelnyxCall(media_url(port, token), call_control_id="v3:x") as phone:
            phone.start_line()
            answer = ask(phone, QUESTION)
            phone.stop()
    finally:
        processes.stop(process, "voice")
        fake.stop()
    assert fake.requests, "the real LLM was tried first"
    assert heard_saturday_answer(answer), answer
    assert "using the local one" in log_path.read_text()


def test_garbage_frames_are_dropped_and_a_flood_closes_only_its_own_stream(
    voice: int,
    e2e_sessions: sessionmaker[Session],
    new_call: NewCall,
) -> None:
    call, token = new_call()
    _, flood_token = new_call()
    with FakeTelnyxCall(media_url(voice, token), call_control_id="v3:good") as phone:
        phone.start_line()
        phone.send_raw("not json at all")
        phone.send_raw(
            '{"event":"media","sequence_number":"3","media":{"payload":"%%% not base64"}}'
        )
        phone.send_raw(
            '{"event":"media","sequence_number":"1","media":{"payload":"/w=="}}'
        )  # late duplicate
        phone.send_raw(
            '{"event":"media","sequence_number":"99999","media":{"track":"outbound","payload":"/w=="}}'
        )
        flood = FakeTelnyxCall(media_url(voice, flood_token), call_control_id="v3:flood")
        try:
            with contextlib.suppress(CallClosed):
                flood.connect()
                for _ in range(2000):
                    flood.send_raw(
                        '{"event":"media","sequence_number":"2","media":{"payload":"/w=="}}'
                    )
            assert flood.wait_closed(timeout=10)
        finally:
            flood.close()
        answer = ask(phone, QUESTION)
        phone.stop()
    assert heard_saturday_answer(answer), answer
    assert [t.speaker for t in turns(e2e_sessions, call.id)][:3] == ["agent", "caller", "agent"]
