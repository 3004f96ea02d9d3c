"""The check on the tiny tower: linear probes on its frozen patch features.

LLaVA's projection W is linear (§4.1, eq. 1), so what stage 1 can pass to the LM is what a *linear* map can read
from each patch feature. The probes ask exactly that, per grid cell: is it occupied, and by what colour, shape and
size — and does a patch know which cell it sits in (position must survive to the features for "where" questions).
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F
from einops import rearrange

from ..data.grid import GRID
from ..data.shapes import COLORS, SHAPES, SIZES
from ..model.vision import encode_images
from .tower import to_pixels

@torch.no_grad()
def probe_features(vision, scenes_train, scenes_test, image_size: int, select_layer: int = -2) -> dict[str, float]:
    """Linear probes on frozen per-patch features: can a linear map read each cell's contents and its place?

    Multinomial logistic regression (L-BFGS) per task on ``scenes_train``, accuracy on ``scenes_test`` beside the
    majority answer's; an empty cell has no colour, shape or size and is left out of those three."""

    def features(scenes):
        feats = torch.cat([encode_images(vision, to_pixels([s[2] for s in scenes[i:i + 256]]), select_layer)
                           for i in range(0, len(scenes), 256)])  # (B, 9, D)
        labels = {k: torch.full((len(scenes), GRID * GRID), -1, dtype=torch.long) for k in
                  ("occupied", "color", "shape", "size")}
        labels["cell"] = torch.arange(GRID * GRID).repeat(len(scenes), 1)  # does a patch know where it is?
        for b, (_, layout, _) in enumerate(scenes):
            labels["occupied"][b] = 0
            for o in layout:
                labels["occupied"][b, o.cell] = 1
                labels["color"][b, o.cell] = list(COLORS).index(o.color)
                labels["shape"][b, o.cell] = SHAPES.index(o.shape)
                labels["size"][b, o.cell] = list(SIZES).index(o.size)
        # one probe example per patch: (B, 9, D) → (B·9, D), labels (B, 9) → (B·9,)
        return (rearrange(feats, "b cell d -> (b cell) d"),
                {k: rearrange(v, "b cell -> (b cell)") for k, v in labels.items()})

    x_tr, y_tr = features(scenes_train)
    x_te, y_te = features(scenes_test)
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
    result = {}
    for task in y_tr:
        keep_tr, keep_te = y_tr[task] >= 0, y_te[task] >= 0
        n_cls = int(y_tr[task][keep_tr].max()) + 1
        with torch.enable_grad():
            w = torch.zeros(x_tr.shape[1], n_cls, requires_grad=True)
            b = torch.zeros(n_cls, requires_grad=True)
            opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                loss = F.cross_entropy(x_tr[keep_tr] @ w + b, y_tr[task][keep_tr]) + 1e-3 * w.pow(2).sum()
                loss.backward()
                return loss
            opt.step(closure)
        pred = (x_te[keep_te] @ w + b).argmax(-1)
        result[task] = round((pred == y_te[task][keep_te]).float().mean().item(), 4)
        result[f"{task}_majority"] = round(Counter(y_te[task][keep_te].tolist()).most_common(1)[0][1]
                                           / int(keep_te.sum()), 4)
    return result
