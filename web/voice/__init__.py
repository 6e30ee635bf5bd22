"""The `voice` process: Telnyx media-stream websocket and the real-time loop."""
