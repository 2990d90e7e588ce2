"""Receiver heads: each takes decoded CLIP features (never images) and returns a typed result."""
from .zeroshot import ZeroShotClassifier, ZeroShotResult

__all__ = ["ZeroShotClassifier", "ZeroShotResult"]
