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
    from .lora import has_lora, merge_lora, trainable_state

    if has_lora(model.lm) and not getattr(cfg, "lora_4bit", False):
        merge_lora(model)  # W₀ + (α/r)·BA in place: the directory loads without peft (4-bit keeps the adapter)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_weights(out_dir / "model.safetensors.tmp", trainable_state(model, include_lm=include_lm),
                 {"projector": model.projector_type, "select_layer": model.select_layer})
    (out_dir / "model.safetensors.tmp").replace(out_dir / "model.safetensors")
    (out_dir / "config.json.tmp").write_text(json.dumps({**cfg.to_dict(), **(extra or {})}, indent=1))
    (out_dir / "config.json.tmp").replace(out_dir / "config.json")
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
        weights = load_weights(model_dir / "model.safetensors")
        if any("lora_" in k for k in weights):  # an unmerged adapter (a QLoRA run): attach it, merge unless 4-bit
            from .lora import apply_lora, load_trainable_state, merge_lora
            load_trainable_state(apply_lora(model, cfg), weights)
            if not cfg.lora_4bit:
                merge_lora(model)
        else:
            model.load_trainable_state(weights)
    except Exception as e:  # safetensors' own errors, or torch's multi-line state_dict mismatch
        why = " ".join(str(e).split())[:300] or e.__class__.__name__
        raise ValueError(f"{model_dir / 'model.safetensors'}: cannot load the trained weights ({why})") from None
    return model.to(device).eval(), processor, cfg
