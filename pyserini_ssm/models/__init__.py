"""Reranker models: registry, templates, checkpoint formats, scoring model and the `Reranker`."""
