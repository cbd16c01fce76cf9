"""Local serving: OpenAI requests in, engine calls, OpenAI responses out."""
