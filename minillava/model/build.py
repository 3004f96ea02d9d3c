"""Assemble a MiniLlava from a Config, and save / load a trained one as a model directory.

A model directory holds ``config.json`` (the full Config: backbone names, projector, layer) and
``model.safetensors`` (the trained parts: W, and f_φ after stage 2). The frozen vision tower is never copied:
it is loaded again from its name, exactly as LLaVA checkpoints refer to CLIP by name.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .backbones import load_lm, load_vision
from .llava import MiniLlava, load_weights, save_weights


def build_model(cfg, dtype=torch.float32) -> tuple[MiniLlava, object]:
    """(model, image processor) for ``cfg``: pretrained g and f_φ, a fresh projector W (seeded)."""
    vision, processor = load_vision(cfg.vision_name, image_size=cfg.image_size, dtype=dtype,
                                    trust_remote_code=cfg.trust_remote_code)
    lm, tokenizer = load_lm(cfg.lm_name, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    torch.manual_seed(cfg.seed)  # the projector's initialisation is part of the run's seed
    model = MiniLlava(vision, lm, tokenizer, projector=cfg.projector, select_layer=cfg.vision_select_layer,
                      keep_cls=cfg.vision_keep_cls)
    model.projector.to(dtype)
    return model, processor


def save_model(model: MiniLlava, cfg, out_dir: str | Path, include_lm: bool = True, extra: dict | None = None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_weights(out_dir / "model.safetensors.tmp", model.trainable_state(include_lm=include_lm),
                 {"projector": model.projector_type, "select_layer": model.select_layer})
    (out_dir / "model.safetensors.tmp").replace(out_dir / "model.safetensors")
    (out_dir / "config.json").write_text(json.dumps({**cfg.to_dict(), **(extra or {})}, indent=1))
    return out_dir


def load_model(model_dir: str | Path, device: str = "cpu", **overrides):
    """(model, processor, cfg) from a model directory written by ``save_model`` (safetensors only)."""
    from ..config import Config, load_config

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file() or not (model_dir / "model.safetensors").is_file():
        raise FileNotFoundError(f"{model_dir}: not a minillava model directory (config.json + model.safetensors)")
    values = json.loads((model_dir / "config.json").read_text())
    known = set(Config.__dataclass_fields__)
    cfg = load_config(values.get("preset", "tiny"), {**{k: v for k, v in values.items() if k in known}, **overrides})
    model, processor = build_model(cfg)
    model.load_trainable_state(load_weights(model_dir / "model.safetensors"))
    return model.to(device).eval(), processor, cfg
