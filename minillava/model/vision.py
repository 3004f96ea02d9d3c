"""§4.1 the vision encoder g: Z_v = g(X_v).

LLaVA takes CLIP ViT-L/14's grid features "before and after the last Transformer layer" and uses the
*penultimate* one (§4.1; in Table 8 last-layer features score lower on ScienceQA): the last layer is
trained to pool everything into CLS for the contrastive loss, so its patch tokens are less local. The CLS token
itself is dropped, leaving one feature per patch. The encoder is frozen in both training stages.
"""

from __future__ import annotations

import torch
from torch import nn


def select_features(hidden_states: tuple[torch.Tensor, ...], select_layer: int = -2,
                    keep_cls: bool = False) -> torch.Tensor:
    """Z_v from the tower's hidden states: (B, 1 + N, Dv) at ``select_layer`` → (B, N, Dv), CLS dropped."""
    features = hidden_states[select_layer]  # hidden_states[0] is the patch embedding, [-1] the last layer
    return features if keep_cls else features[:, 1:]


@torch.no_grad()
def encode_images(vision: nn.Module, pixel_values: torch.Tensor, select_layer: int = -2,
                  keep_cls: bool = False) -> torch.Tensor:
    """g(X_v): pixels (B, 3, H, W) → Z_v (B, N, Dv), N = (H / patch)² patches (+1 with CLS)."""
    out = vision(pixel_values=pixel_values, output_hidden_states=True)
    return select_features(out.hidden_states, select_layer, keep_cls)
