"""The peer the voice benchmark measures against: the naive flask-sock relay of
../shared/reference/performance.md §4, rebuilt here so that it runs in the same benchmark,
on the same core, minutes apart from the voice worker (this VM's speed drifts).

Per Telnyx media frame: JSON parse, base64 decode, μ-law → PCM, and one 20 ms frame back
(PCM → μ-law, base64, JSON), with simple-websocket's framing (wsproto, pure Python) under
gunicorn's gevent worker. No providers, no turn-taking, no database: a floor, not a voice
agent. Serve it with `gunicorn -k gevent -w 1 scripts.bench.relay:app`.
"""

from __future__ import annotations

import base64
import json
import warnings

from flask import Flask
from flask_sock import Sock

with warnings.catch_warnings():  # deprecated in 3.11-3.12 (PEP 594); as shared/voice/audio.py
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

app = Flask(__name__)
sock = Sock(app)


@app.get("/readyz")
def ready() -> str:
    return "ok"


@sock.route("/media/telnyx")
def relay(ws: object) -> None:
    while True:
        message = json.loads(ws.receive())  # type: ignore[attr-defined]
        event = message.get("event")
        if event == "stop":
            return
        if event != "media":
            continue
        pcm = audioop.ulaw2lin(base64.b64decode(message["media"]["payload"]), 2)
        payload = base64.b64encode(audioop.lin2ulaw(pcm, 2)).decode()
        ws.send(json.dumps({"event": "media", "media": {"payload": payload}}))  # type: ignore[attr-defined]
