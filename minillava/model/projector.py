"""§4.1 the projection W: H_v = W · Z_v, from vision width Dv to the LM's word-embedding width D.

LLaVA uses one linear layer ("a simple linear layer to connect image features into the word embedding
space", §4.1); LLaVA-1.5 replaces it with two linear layers and a GELU between them (``mlp2x_gelu``), which
raises every score in its scaling table (`minillava.paper.LLAVA15_SCALING`, "+ MLP connector").
"""

from __future__ import annotations

from torch import nn

PROJECTORS = ("linear", "mlp2x_gelu")


def build_projector(kind: str, vision_width: int, lm_width: int) -> nn.Module:
    """W: (B, N, Dv) → (B, N, D)."""
    if kind == "linear":
        return nn.Linear(vision_width, lm_width)
    if kind == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(vision_width, lm_width), nn.GELU(), nn.Linear(lm_width, lm_width))
    raise ValueError(f"unknown projector {kind!r}; expected one of {', '.join(PROJECTORS)}")
