"""The quickstart with every projected token rescaled to one norm, the scale of the LM's word embeddings (issue 25).

After the README's stage 2 an image token at an empty cell has norm 29 and one at an object 8 (cell words: 1.1–1.3;
`what_at_tokens.py`). A pre-norm LM adds updates of about a word's norm to each position, so a token that large
passes its layers almost as it came in. Here W is the shipped MLP followed by H_v ← SCALE · H_v / ‖H_v‖ (a departure
from §4.1's W, for this trial only). Usage:
  python benchmarks/experiments/normed_projector.py RUN SCALE [key=value ...]   # run_quickstart into RUN
  python benchmarks/experiments/normed_projector.py --measure SCALE what_at_tokens.py ARGS...   # load with the patch
"""
import runpy
import sys

import torch.nn.functional as F
from torch import nn

import minillava.model.llava as llava
from minillava.model.projector import build_projector


class ToNorm(nn.Module):
    """Each token (…, D) rescaled to norm ``scale``."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1)


def patch(scale: float) -> None:
    llava.build_projector = lambda kind, dv, d: nn.Sequential(*build_projector(kind, dv, d), ToNorm(scale))


if sys.argv[1] == "--measure":
    patch(float(sys.argv[2]))
    sys.argv = sys.argv[3:]
    runpy.run_path(sys.argv[0], run_name="__main__")
else:
    from minillava.quickstart import run_quickstart
    patch(float(sys.argv[2]))
    metrics = run_quickstart(sys.argv[1], overrides=sys.argv[3:], progress=False)
    print(metrics["accuracy"])
