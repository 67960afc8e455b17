"""The frozen-feature cache: what it holds and how it is read (cache.py), and how it is built (build.py)."""
