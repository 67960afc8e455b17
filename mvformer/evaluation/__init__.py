"""Embedding whole videos and the protocol metrics."""
