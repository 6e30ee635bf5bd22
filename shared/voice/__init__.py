"""Real-time voice: audio codecs, the Telnyx media protocol, turn-taking and the call loop."""
