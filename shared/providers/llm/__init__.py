"""Language model: Groq streaming chat with tools, or the local deterministic agent."""
