"""splitsim: a discrete-event simulator for split (collaborative) LLM inference."""

__version__ = "0.1.0"
