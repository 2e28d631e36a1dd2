"""injector: keep an open-weight LLM in step with a knowledge graph."""

__version__ = "0.1.0"
