from .llava import MiniLlava
from .projector import build_projector

__all__ = ["MiniLlava", "build_projector"]
