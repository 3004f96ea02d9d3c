"""The learning-rate factor every stage-0 run uses: linear warmup *times* a cosine over all steps.

It is not ``train.cosine_with_warmup`` (warmup, then a cosine over the steps after it): the two give different
factors at every step, and the shipped stand-ins were trained with this one, so reusing that would change them.
"""

from __future__ import annotations

import math


def warmup_cosine(steps: int, warmup_steps: int):
    """``factor(s) = min(1, (s + 1) / warmup_steps) · ½ (1 + cos(π · min(s, steps) / steps))`` for LambdaLR."""
    def factor(s: int) -> float:
        return min(1, (s + 1) / warmup_steps) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    return factor
