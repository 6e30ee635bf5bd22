"""Local servers that speak a provider's real protocol and record what they got.

Used by the tests (through the real clients) and by scripts/simulate-call.
"""
