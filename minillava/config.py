"""Presets: ``tiny`` (embedded scenes, CPU), ``small`` (COCO subset, one GPU), ``paper`` (ViT-L/14 + 7B, several GPUs).

One flat dataclass with prefixed fields (``vision_*``, ``lm_*``, ``stage1_*``, ``stage2_*``); any field can be
overridden by ``key=value`` on the command line or by a YAML/JSON file. Values from the paper (§4.2, PAPER.md):
stage 1 batch 128, lr 2e-3, 1 epoch, only W trains; stage 2 batch 32, lr 2e-5, 3 epochs, W and the LM train;
AdamW without weight decay, cosine schedule with 3% warmup.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path


class ConfigError(ValueError):
    """An invalid preset name, key or value; the message names it."""


@dataclass
class Config:
    preset: str = "tiny"
    seed: int = 0
    # data: a COCO-format directory (made by `minillava data shapes` or `data coco`) and its instruction JSON
    data_source: str = "shapes"          # shapes | coco
    data_dir: str = "data/shapes"        # shapes are generated here when missing; coco: `minillava data coco`
    data_split: str = "train"
    data_images: int = 6000              # shapes: total scenes over train/val/test
    instruct_json: str = ""              # stage-2 data; empty = rule teacher on the train split
    stage2_types: str = "conv,detail,complex"
    image_size: int = 96
    # model (§4.1)
    vision_name: str = "tiny"            # "tiny" (shipped stand-in) or a hub id / local directory
    vision_select_layer: int = -2        # penultimate layer (§4.1, Table 8)
    vision_keep_cls: bool = False
    projector: str = "mlp2x_gelu"        # linear (LLaVA) | mlp2x_gelu (LLaVA-1.5)
    lm_name: str = "tiny"
    trust_remote_code: bool = False
    cache_features: bool = True          # the tower is frozen: compute Z_v once per image
    init_from: str = ""                  # a model directory whose trained parts start this run (stage 1 → 2)
    # stage 1: feature alignment (§4.2)
    stage1_steps: int = 200
    stage1_batch: int = 64
    stage1_lr: float = 2e-3
    stage1_template: str = "plain"
    # stage 2: end-to-end instruction tuning (§4.2)
    stage2_steps: int = 800
    stage2_batch: int = 32
    stage2_lr: float = 1e-3
    stage2_template: str = "vicuna_v1"
    # shared optimisation
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    grad_accum: int = 1
    clip_grad: float = 1.0
    max_length: int = 384
    group_by_length: int = 16           # batches per length-sorted mega-batch (0 = plain shuffling)
    bf16: bool = True                    # autocast on CUDA only; CPU runs in fp32
    log_every: int = 25
    eval_every: int = 200                # held-out loss every N steps (0 = never)
    save_every: int = 250
    keep_checkpoints: int = 2
    device: str = "auto"

    def validate(self) -> "Config":
        from .conversation import TEMPLATES
        from .model.projector import PROJECTORS
        positive = ["stage1_batch", "stage2_batch", "grad_accum", "max_length", "image_size", "log_every"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"config field '{name}' must be positive, got {getattr(self, name)}")
        for name in ["stage1_lr", "stage2_lr", "stage1_steps", "stage2_steps", "weight_decay", "warmup_ratio"]:
            if getattr(self, name) < 0:
                raise ConfigError(f"config field '{name}' must not be negative, got {getattr(self, name)}")
        if self.projector not in PROJECTORS:
            raise ConfigError(f"config field 'projector': unknown {self.projector!r}; expected {' or '.join(PROJECTORS)}")
        for name in ["stage1_template", "stage2_template"]:
            if getattr(self, name) not in TEMPLATES:
                raise ConfigError(f"config field '{name}': unknown template {getattr(self, name)!r}; "
                                  f"expected one of {', '.join(TEMPLATES)}")
        if self.data_source not in ("shapes", "coco"):
            raise ConfigError(f"config field 'data_source': expected shapes or coco, got {self.data_source!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict] = {
    "tiny": {},
    "small": dict(preset="small", data_source="coco", data_dir="data/coco", data_split="val2017", data_images=5000, image_size=224,
                  vision_name="openai/clip-vit-base-patch16", lm_name="HuggingFaceTB/SmolLM2-135M-Instruct",
                  stage1_steps=1000, stage1_batch=32, stage1_lr=1e-3, stage2_steps=3000, stage2_batch=16,
                  stage2_lr=2e-5, max_length=1024, log_every=10, save_every=500),
    "paper": dict(preset="paper", data_source="coco", data_dir="data/coco", data_split="train2017", data_images=118_287, image_size=224,
                  vision_name="openai/clip-vit-large-patch14", lm_name="lmsys/vicuna-7b-v1.5", projector="linear",
                  stage1_steps=4650, stage1_batch=128, stage1_lr=2e-3, stage2_steps=14_800, stage2_batch=32,
                  stage2_lr=2e-5, max_length=2048, log_every=10, save_every=1000),
}


def _coerce(name: str, value, kind):
    if kind is bool and isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"config field '{name}': expected true or false, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config field '{name}': expected {kind.__name__}, got {value!r}") from None


def load_config(preset: str = "tiny", overrides: list[str] | dict | None = None, file: str | Path | None = None) -> Config:
    """Preset, then a YAML/JSON file, then ``key=value`` overrides; every key and value is checked."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    values = dict(PRESETS[preset])
    if file:
        path = Path(file)
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml
            loaded = yaml.safe_load(text)
        else:
            loaded = json.loads(text)
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of config fields")
        values.update(loaded)
    if isinstance(overrides, dict):
        values.update(overrides)
    else:
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not key=value")
            key, value = item.split("=", 1)
            values[key.strip()] = value
    types = {f.name: type(f.default) for f in fields(Config)}
    for key in values:
        if key not in types:
            raise ConfigError(f"unknown config field {key!r}")
    return Config(**{k: _coerce(k, v, types[k]) for k, v in values.items()}).validate()
