"""Assemble a MiniLlava from a Config, and save / load a trained one as a model directory.

A model directory holds ``config.json`` (the full Config: backbone names, projector, layer) and
``model.safetensors`` (the trained parts: W, and f_φ after stage 2). The frozen vision tower is never copied:
it is loaded again from its name, exactly as LLaVA checkpoints refer to CLIP by name.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoint import load_weights, save_weights
from ..files import write_json
from .backbones import load_lm, load_vision
from .llava import MiniLlava
from .lora import merge_lora


def build_model(cfg, dtype=torch.float32) -> tuple[MiniLlava, object]:
    """(model, image processor) for ``cfg``: pretrained g and f_φ, a fresh projector W (seeded)."""
    from ..config import ConfigError

    for field in ("vision_name", "lm_name"):  # a path that is not there must not be sent to the hub as a name
        name = getattr(cfg, field)
        if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().is_dir():
            raise ConfigError(f"config field '{field}': directory {name} does not exist")
    vision, processor = load_vision(cfg.vision_name, image_size=cfg.image_size, dtype=dtype,
                                    trust_remote_code=cfg.trust_remote_code)
    if getattr(cfg, "lora_4bit", False):  # QLoRA: the frozen f_φ in 4-bit NF4 (bitsandbytes + CUDA; model/lora.py)
        from .lora import load_lm_4bit
        lm, tokenizer = load_lm_4bit(cfg.lm_name, trust_remote_code=cfg.trust_remote_code)
    else:
        lm, tokenizer = load_lm(cfg.lm_name, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    torch.manual_seed(cfg.seed)  # the projector's initialisation is part of the run's seed
    model = MiniLlava(vision, lm, tokenizer, projector=cfg.projector, select_layer=cfg.vision_select_layer,
                      keep_cls=cfg.vision_keep_cls)
    model.projector.to(dtype)
    return model, processor


def save_model(model: MiniLlava, cfg, out_dir: str | Path, include_lm: bool = True, extra: dict | None = None) -> Path:
    """Write a model directory; ``model`` itself is left as it was (a LoRA adapter is merged on a copy)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # a 4-bit base cannot take W₀ + (α/r)·BA: QLoRA directories keep the bare adapter
    save_weights(out_dir / "model.safetensors", model, include_lm, keep_adapter=getattr(cfg, "lora_4bit", False))
    write_json(out_dir / "config.json", {**cfg.to_dict(), **(extra or {})}, indent=1)
    return out_dir


def load_model(model_dir: str | Path, device: str = "cpu", **overrides):
    """(model, processor, cfg) from a model directory written by ``save_model`` (safetensors only).

    A model directory may come from anyone, so its ``config.json`` cannot switch on ``trust_remote_code``;
    only the caller can (``load_model(dir, trust_remote_code=True)``).
    """
    from ..config import Config, load_config

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file() or not (model_dir / "model.safetensors").is_file():
        raise FileNotFoundError(f"{model_dir}: not a minillava model directory (config.json + model.safetensors)")
    try:
        values = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{model_dir / 'config.json'}: not valid JSON ({e.__class__.__name__}: {e})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{model_dir / 'config.json'}: expected a JSON object of config fields")
    known = set(Config.__dataclass_fields__) - {"trust_remote_code"}
    cfg = load_config(values.get("preset", "tiny"), {**{k: v for k, v in values.items() if k in known}, **overrides})
    model, processor = build_model(cfg)
    try:
        load_weights(model, model_dir / "model.safetensors", cfg)  # a QLoRA directory's adapter is attached
        if not cfg.lora_4bit:
            merge_lora(model)  # ... and merged unless the base is 4-bit
    except Exception as e:  # safetensors' own errors, or torch's multi-line state_dict mismatch
        why = " ".join(str(e).split())[:300] or e.__class__.__name__
        raise ValueError(f"{model_dir / 'model.safetensors'}: cannot load the trained weights ({why})") from None
    return model.to(device).eval(), processor, cfg
