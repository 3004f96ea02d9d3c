"""§4.2 the freeze policy: which parameters train in which stage, LoRA included.

    stage 1  feature alignment     trains W              frozen: g, f_φ
    stage 2  end-to-end tuning     trains W and f_φ      frozen: g
             with LoRA (lora_r>0)  trains W and A, B     frozen: g, f_φ's own weights

g is frozen in both stages, which is why Z_v can be computed once per image and cached.
"""

from __future__ import annotations

import torch

from .lora import has_lora, is_adapter_weight

STAGES = {1: dict(train_lm=False), 2: dict(train_lm=True)}


def trains_lm(stage: int) -> bool:
    """Whether f_φ (or its LoRA adapter) learns in ``stage``: only in stage 2, instruction tuning."""
    return STAGES[stage]["train_lm"]


def set_trainable(model, stage: int) -> list[torch.nn.Parameter]:
    """Vision always frozen; the LM trains only in stage 2 (with LoRA, only its adapter); W always trains."""
    model.vision.requires_grad_(False)
    model.lm.requires_grad_(STAGES[stage]["train_lm"])
    model.projector.requires_grad_(True)
    if STAGES[stage]["train_lm"] and has_lora(model.lm):  # A and B train; f_φ's own weights stay frozen
        for name, p in model.lm.named_parameters():
            p.requires_grad_(is_adapter_weight(name))
    return [p for p in model.parameters() if p.requires_grad]
