"""LoRA for stage 2 (§4.2 with low-rank updates, as the LLaVA repository's ``--lora_enable`` and LLaVA-1.5 do).

Stage 2 normally updates every weight of f_φ. LoRA (Hu et al., 2021) freezes them and learns, for each targeted
linear map W₀ ∈ R^{d_out×d_in} (here the attention projections q, k, v, o), a low-rank update

    h = W₀ x + (α / r) · B A x,     A ∈ R^{r×d_in} (random),  B ∈ R^{d_out×r} (zeros: training starts at W₀)

The projector W stays fully trained, as in the paper; the vision tower stays frozen (``freeze.set_trainable``).
Checkpoints hold only the adapter (A, B) and the projector; a finished model is saved with the adapter *merged*
(W₀ + (α/r)·BA) on a copy, so a model directory loads with plain transformers, without peft (``checkpoint.py``). QLoRA (Dettmers et al., 2023) keeps W₀ in 4-bit NF4; that
needs bitsandbytes and a CUDA GPU.

peft is an optional extra (``pip install 'minillava[lora]'``), imported only when LoRA is switched on.
"""

from __future__ import annotations

import copy

import torch

PEFT_MISSING = "lora_r > 0 needs peft: pip install 'minillava[lora]'"


def _peft():
    try:
        import peft
    except ImportError:
        raise ImportError(PEFT_MISSING) from None
    return peft


def has_lora(lm) -> bool:
    """True if ``lm`` is wrapped by peft (an adapter is attached and not yet merged)."""
    return hasattr(lm, "peft_config")


def is_adapter_weight(name: str) -> bool:
    """True for a LoRA A or B tensor of a peft-wrapped LM (peft names them ``...q_proj.lora_A.default.weight``)."""
    return "lora_" in name


def apply_lora(model, cfg):
    """Wrap ``model.lm`` with LoRA adapters on ``cfg.lora_targets``; every base weight of the LM is frozen."""
    peft = _peft()
    if has_lora(model.lm):
        return model
    targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    names = {n.rsplit(".", 1)[-1] for n, m in model.lm.named_modules() if isinstance(m, torch.nn.Linear)}
    unknown = [t for t in targets if t not in names]
    if unknown:
        raise ValueError(f"config field 'lora_targets': the LM has no linear layer named {', '.join(unknown)}; "
                         f"it has {', '.join(sorted(names))}")
    lora_config = peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                  target_modules=targets, bias="none", task_type="CAUSAL_LM")
    if cfg.lora_4bit:  # QLoRA: cast norms to fp32, enable input grads for checkpointing through 4-bit layers
        model.lm = peft.prepare_model_for_kbit_training(model.lm, use_gradient_checkpointing=False)
    model.lm = peft.get_peft_model(model.lm, lora_config)  # freezes the base, adds A, B per target
    return model


def merge_lora(model):
    """Fold the adapter into the LM in place (W₀ ← W₀ + (α/r)·BA) and drop peft's wrapper; returns ``model``."""
    if has_lora(model.lm):
        model.lm = model.lm.merge_and_unload()
    return model


def merged_copy(model):
    """A copy of ``model`` with the adapter merged; ``model`` keeps its adapter (e.g. to go on training)."""
    return merge_lora(copy.deepcopy(model)) if has_lora(model.lm) else model


def require_4bit() -> None:
    """QLoRA's 4-bit base weights exist only with bitsandbytes on a CUDA GPU; say so in one line otherwise."""
    if not torch.cuda.is_available():
        raise ValueError("lora_4bit=true needs a CUDA GPU (bitsandbytes 4-bit layers); use lora_4bit=false on CPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ValueError("lora_4bit=true needs bitsandbytes: pip install bitsandbytes") from None


def load_lm_4bit(name: str, *, trust_remote_code: bool = False):
    """(LM, tokenizer) as ``backbones.load_lm`` gives them, but with NF4 4-bit linear layers (compute in bf16) on
    this process's GPU; the embeddings stay in full precision."""
    import os

    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from .backbones import backbone_path, register_image_token

    require_4bit()
    path = backbone_path(name, "lm")
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    lm = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, trust_remote_code=trust_remote_code,
                                              device_map={"": int(os.environ.get("LOCAL_RANK", 0))})
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return register_image_token(lm, tokenizer)
