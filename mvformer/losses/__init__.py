"""Training objectives, each a pure function of embeddings and their frame positions."""
