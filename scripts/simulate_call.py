"""Play Telnyx against a running stack: a whole phone call, no API keys needed.

Signed webhooks (with the local key pair `scripts/run` made), Call Control answered by
the worker against this script's loopback Telnyx API, a media stream carrying caller
lines spoken by Piper in real time (one of them interrupting the agent), the agent's
audio recorded to a WAV and transcribed by Whisper. Prints the conversation as heard,
the per-turn latency table and the call as stored.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import requests

from scripts.devstack import SIMULATOR_TELNYX_PORT
from scripts.fakes.http_fake import HttpFake
from scripts.fakes.listen import transcribe_ulaw
from scripts.fakes.telnyx_api import actions, start_fake_telnyx
from scripts.fakes.telnyx_events import TelnyxSigner, call_payload, envelope, load_or_create_signer
from scripts.fakes.telnyx_media import FakeTelnyxCall
from shared.config import Settings, load_settings
from shared.providers.tts.local import PiperTts

HERE = Path(__file__).resolve().parent
CALLER = "+14155550111"
NUMBER = "+14155550100"
QUIET_S = 1.2  # agent silence that means "my turn" for the simulated caller


@dataclass(frozen=True)
class Line:
    text: str
    interrupts: bool


def read_script(path: Path) -> list[Line]:
    lines = [raw.strip() for raw in path.read_text().splitlines()]
    return [
        Line(text.lstrip("! ").strip(), text.startswith("!"))
        for text in lines
        if text and not text.startswith("#")
    ]


class Api:
    """The REST API as the demo tenant (created on first use, remembered under DATA_DIR)."""

    def __init__(self, base: str, state: Path) -> None:
        self.base = base.rstrip("/") + "/api/v1"
        self.http = requests.Session()
        creds = json.loads(state.read_text()) if state.exists() else None
        if creds is None:
            creds = {
                "email": f"demo-{uuid.uuid4().hex[:8]}@simulator.example.com",
                "password": uuid.uuid4().hex,
            }
            self.post("/auth/register", {"organization": "Acme Dental (simulator)", **creds})
            state.write_text(json.dumps(creds))
        token = self.post("/auth/login", creds)["access_token"]
        self.http.headers["Authorization"] = f"Bearer {token}"

    def post(self, path: str, body: dict[str, Any]) -> Any:
        response = self.http.post(self.base + path, json=body, timeout=10)
        if response.status_code >= 400:
            sys.exit(f"POST {path}: {response.status_code} {response.text}")
        return response.json()

    def get(self, path: str) -> Any:
        response = self.http.get(self.base + path, timeout=10)
        response.raise_for_status()
        return response.json()

    def ensure_agent(self, spec: dict[str, Any]) -> str:
        numbers = self.get("/phone-numbers?limit=200")["data"]
        routed = next((n for n in numbers if n["number"] == NUMBER), None)
        if routed:
            return str(routed["agent_id"])
        agent = self.post("/agents", spec)
        self.post("/phone-numbers", {"number": NUMBER, "agent_id": agent["id"]})
        return str(agent["id"])


def speak(tts: PiperTts, text: str) -> bytes:
    turn = tts.start_turn(None, "en")
    turn.push(text)
    turn.end()
    chunks: list[bytes] = []
    turn.play(chunks.append)
    return b"".join(chunks)


def webhook(settings: Settings, signer: TelnyxSigner, event: str, payload: dict[str, Any]) -> None:
    body = envelope(event, payload)
    url = settings.public_web_url.rstrip("/") + "/webhooks/telnyx"
    response = requests.post(url, data=body, headers=signer.headers(body), timeout=10)
    if response.status_code != 200:
        sys.exit(f"webhook {event}: {response.status_code} {response.text}")


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {what}")


def wait_quiet(phone: FakeTelnyxCall, timeout: float = 60) -> None:
    wait_for(
        lambda: phone.heard and time.monotonic() - phone.playout_end > QUIET_S,
        timeout,
        "the agent to finish",
    )


def answer_call(fake: HttpFake, settings: Settings, signer: TelnyxSigner, ccid: str) -> str:
    payload = call_payload(ccid, from_=CALLER, to=NUMBER)
    webhook(settings, signer, "call.initiated", payload)
    answer = wait_for(
        lambda: [a for a in actions(fake, "answer") if ccid in unquote(a.path)],
        20,
        "the worker to answer (is scripts/run running?)",
    )[0]
    webhook(settings, signer, "call.answered", payload)
    return str(answer.json()["stream_url"])


def converse(
    phone: FakeTelnyxCall, tts: PiperTts, lines: list[Line]
) -> list[tuple[float, str, str]]:
    """Say each line at the right moment; returns (time, speaker, text) for the caller.

    A normal line waits for the agent's reply to the previous one to finish; an
    interrupting line is said one second into that reply."""
    said: list[tuple[float, str, str]] = []
    replied_from = 0  # bytes heard when the caller last finished speaking
    for line in lines:
        audio = speak(tts, line.text)
        wait_for(lambda m=replied_from: len(phone.heard) > m, 30, "the agent to reply")
        if line.interrupts:
            wait_for(
                lambda m=replied_from: len(phone.heard) > m + 8000, 30, "a second of the reply"
            )
        else:
            wait_quiet(phone)
        said.append((time.monotonic(), "caller", line.text))
        print(f"  caller: {line.text}", flush=True)
        phone.send_audio(audio)
        replied_from = len(phone.heard)
    wait_for(lambda: len(phone.heard) > replied_from, 30, "the agent's last reply")
    wait_quiet(phone)
    return said


def agent_utterances(phone: FakeTelnyxCall, gap_s: float = 0.6) -> list[tuple[float, str, str]]:
    """The agent's audio as heard, split where playback paused, each transcribed."""
    groups: list[tuple[float, bytearray]] = []
    last_end = -1.0
    for start, audio in phone.heard_timeline():
        if not groups or start - last_end > gap_s:
            groups.append((start, bytearray()))
        groups[-1][1].extend(audio)
        last_end = start + len(audio) / 8000
    return [(start, "agent", transcribe_ulaw(bytes(audio))) for start, audio in groups]


def print_report(api: Api, call_id: str, dialogue: list[tuple[float, str, str]], wav: Path) -> None:
    print("\nConversation as heard (agent lines transcribed from the recording):")
    for _, speaker, text in sorted(dialogue):
        print(f"  {speaker:>6}: {text}")
    call = wait_for(
        lambda: (c := api.get(f"/calls/{call_id}")) and c["status"] == "completed" and c,
        20,
        "the hang-up",
    )
    print("\nTurns as stored (latency in ms):")
    print(
        f"  {'#':>2} {'speaker':7} {'stt':>6} {'llm ttft':>8} {'tts ttfa':>8} {'voice→voice':>11}  cut  text"
    )
    for turn in call["turns"]:
        cells = [
            f"{turn[k]:.0f}" if turn[k] is not None else ""
            for k in ("stt_ms", "llm_ttft_ms", "tts_ttfa_ms", "voice_to_voice_ms")
        ]
        cut = "yes" if turn["interrupted"] else ""
        print(
            f"  {turn['seq']:>2} {turn['speaker']:7} {cells[0]:>6} {cells[1]:>8} {cells[2]:>8} {cells[3]:>11}  {cut:>3}  {turn['text'][:70]}"
        )
    time.sleep(2)  # the worker's analysis lands shortly after the hang-up
    call = api.get(f"/calls/{call_id}")
    print("\nCall record:")
    for key in (
        "id",
        "direction",
        "from_number",
        "to_number",
        "status",
        "duration_seconds",
        "hangup_cause",
        "outcome",
    ):
        print(f"  {key:16} {call[key]}")
    print(f"\nAgent audio recorded to {wav}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--script", type=Path, default=HERE / "simulate" / "dental.txt")
    parser.add_argument("--agent", type=Path, default=HERE / "simulate" / "agent.json")
    parser.add_argument("--wav", type=Path, default=Path("simulated-call.wav"))
    args = parser.parse_args()
    settings = load_settings()
    if settings.telnyx_api_key or settings.telnyx_public_key:
        sys.exit(
            "Telnyx credentials are configured: the simulator plays Telnyx only for a stack without them"
        )
    signer = load_or_create_signer(settings.data_dir.resolve() / "telnyx_signing_key")
    api = Api(settings.public_web_url, settings.data_dir.resolve() / "simulator.json")
    api.ensure_agent(json.loads(args.agent.read_text()))
    tts = PiperTts()
    tts.warm_up()
    fake = start_fake_telnyx(SIMULATOR_TELNYX_PORT)
    ccid = f"v3:sim-{uuid.uuid4().hex[:12]}"
    try:
        stream_url = answer_call(fake, settings, signer, ccid)
        call_id = next(
            c["id"] for c in api.get("/calls?limit=5")["data"] if c["from_number"] == CALLER
        )
        print(f"Call {call_id} answered; media stream {stream_url.split('?')[0]}\n")
        with FakeTelnyxCall(stream_url, call_control_id=ccid, from_=CALLER, to=NUMBER) as phone:
            phone.start_line()
            said = converse(phone, tts, read_script(args.script))
            phone.write_wav(args.wav, with_gaps=True)
            heard = agent_utterances(phone)
            phone.stop()
        if actions(fake, "hangup"):
            print("  (the agent ended the call: Call Control hangup received)")
        webhook(
            settings,
            signer,
            "call.hangup",
            {**call_payload(ccid, from_=CALLER, to=NUMBER), "hangup_cause": "normal_clearing"},
        )
        print_report(api, call_id, said + heard, args.wav.resolve())
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
