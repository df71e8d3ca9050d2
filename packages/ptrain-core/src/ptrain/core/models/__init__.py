"""Reference models for ptrain's parallel modes (``gpt``: a GPT-style decoder-only transformer)."""
