"""mvformer: self-supervised frame-level video representation learning with MV-Former and SCL."""

from mvformer.errors import MVFormerError

__version__ = "0.1.0"
__all__ = ["MVFormerError", "__version__"]
