"""Stillroom: an OpenAI-compatible gateway that keeps your chat completions."""

__version__ = "0.1.0"
