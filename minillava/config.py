"""Presets: ``tiny`` (embedded scenes, CPU), ``small`` (COCO subset, one GPU), ``paper`` (ViT-L/14 + 7B, several GPUs).

One flat dataclass with prefixed fields (``vision_*``, ``lm_*``, ``stage1_*``, ``stage2_*``); any field can be
overridden by ``key=value`` on the command line or by a YAML/JSON file. Values from the paper (§4.2; `minillava.paper`):
stage 1 batch 128, lr 2e-3, 1 epoch, only W trains; stage 2 batch 32, lr 2e-5, 3 epochs, W and the LM train;
AdamW without weight decay, cosine schedule with 3% warmup.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path


class ConfigError(ValueError):
    """An invalid preset name, key or value; the message names it."""


@dataclass(frozen=True)
class StageConfig:
    """One §4.2 training stage's settings, read from the flat ``stage{1,2}_*`` fields (``cfg.stage(2).lr``).

    The flat fields stay the source of truth: they are the ``key=value`` names of the command line and the keys
    of every saved ``config.json``. This view only lets the trainer name a stage's settings without building
    field names from strings.
    """
    number: int
    steps: int        # optimiser steps
    batch: int        # global batch: processes × grad_accum × micro-batch
    lr: float         # peak learning rate of the cosine schedule
    template: str     # conversation template (conversation.TEMPLATE_NAMES)

    def field(self, name: str) -> str:
        """The flat Config field behind ``name``, e.g. ``stage2_batch``: what error messages and resume checks cite."""
        return f"stage{self.number}_{name}"


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
    # rule teacher: the chance that "What is at the {position}?" asks of an occupied cell, not a random one (most are
    # empty, so 0 rewards "nothing"); the held-out questions always ask of a random one (``data.teachers``)
    teacher_occupied: float = 0.0
    # rule teacher: relations answered with the two objects' cells first, then the relation (a worked answer, as the
    # stand-in chat LM learned them in stage 0); false: the relation alone
    teacher_worked_relations: bool = True
    # rule teacher: "What is at the {position}?" answered with every object's cell first, then what is there
    teacher_worked_what_at: bool = False
    # rule teacher: a conversation sample asks 2 to this many of the scene's questions (LLaVA's conversations are
    # multi-turn, §3)
    teacher_max_turns: int = 4           # = data.teachers.MAX_TURNS, whose data file has no suffix
    # rule teacher: a conversation asks first the questions only colour and shape together answer (needs_binding)
    teacher_binding_first: bool = False
    image_size: int = 96
    # model (§4.1)
    vision_name: str = "tiny"            # "tiny" (shipped stand-in) or a hub id / local directory
    vision_select_layer: int = -2        # penultimate layer (§4.1, Table 8)
    vision_keep_cls: bool = False
    projector: str = "mlp2x_gelu"        # linear (LLaVA) | mlp2x_gelu (LLaVA-1.5)
    lm_name: str = "tiny"
    trust_remote_code: bool = False
    cache_features: bool = True          # the tower is frozen: compute Z_v once per image
    feature_cache_dir: str = ""          # also keep Z_v on disk here, reused across runs ("" = in memory only)
    feature_cache_dtype: str = "bf16"    # bf16 | fp16 | fp32 (fp32: bit-identical to computing online)
    init_from: str = ""                  # a model directory whose trained parts start this run (stage 1 → 2)
    # stage 1: feature alignment (§4.2)
    stage1_steps: int = 375              # one epoch of the 24,000 training captions (4,800 scenes × 5), as LLaVA (§5)
    stage1_batch: int = 64
    stage1_lr: float = 2e-3
    stage1_template: str = "plain"
    # stage 1 also reads each embedded scene cell by cell, empty cells included (data.teachers.cell_by_cell; ours)
    stage1_cell_captions: bool = False
    # then W fitted this many steps (stage1_batch scenes each) to put each cell's token on the stand-in LM's cell word
    # for it: §4.2's "compatible visual tokenizer" made explicit (ours; ``align``; the tiny preset sets 1,000)
    stage1_cell_word_steps: int = 0
    stage1_cell_word_ce: float = 0.05    # weight of the term that makes the right cell word the nearest (0: squared error)
    # stage 2: end-to-end instruction tuning (§4.2)
    stage2_steps: int = 1500            # measured with a 200-step stage 1: all 0.794 (1,300: 0.786; 1,800: 0.789)
    stage2_batch: int = 32
    stage2_lr: float = 1e-3
    stage2_template: str = "vicuna_v1"
    # stage 2 with LoRA (model/lora.py): f_φ frozen, low-rank adapters on these linears; W still fully trained
    lora_r: int = 0                      # adapter rank; 0 = off (full fine-tuning of f_φ, as the paper)
    lora_alpha: float = 16.0             # the update is scaled by lora_alpha / lora_r
    lora_dropout: float = 0.05
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj"
    lora_4bit: bool = False              # QLoRA: the frozen LM in 4-bit NF4 (bitsandbytes + CUDA only)
    # shared optimisation
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    grad_accum: int = 1
    clip_grad: float = 1.0
    max_length: int = 384
    group_by_length: int = 16           # batches per length-sorted mega-batch (0 = plain shuffling)
    bf16: bool = True                    # autocast on CUDA only; CPU runs in fp32
    pack_sequences: bool = False         # padding-free rows of up to max_length tokens (position ids restart)
    share_prefix: bool = True            # the batch's common system prompt runs through the LM once (model.llava.decode_rest)
    compile: bool = False                # torch.compile the LM decoder (off: CPU compile is slow to start)
    gradient_checkpointing: bool = False  # stage 2: recompute each LM layer in the backward (less memory, more time)
    log_every: int = 25
    eval_every: int = 200                # held-out loss every N steps (0 = never)
    save_every: int = 250
    keep_checkpoints: int = 2
    device: str = "auto"

    def validate(self) -> "Config":
        from .conversation import TEMPLATE_NAMES as TEMPLATES
        from .model.projector import PROJECTORS
        for f in fields(self):  # "nan" and "inf" parse as floats; no field means them
            if isinstance(getattr(self, f.name), float) and not math.isfinite(getattr(self, f.name)):
                raise ConfigError(f"config field '{f.name}' must be a finite number, got {getattr(self, f.name)}")
        positive = ["stage1_batch", "stage2_batch", "grad_accum", "max_length", "image_size", "log_every",
                    "save_every", "keep_checkpoints", "clip_grad"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"config field '{name}' must be positive, got {getattr(self, name)}")
        for name in ["stage1_lr", "stage2_lr", "stage1_steps", "stage2_steps", "weight_decay", "warmup_ratio",
                     "eval_every", "group_by_length", "stage1_cell_word_steps", "stage1_cell_word_ce"]:
            if getattr(self, name) < 0:
                raise ConfigError(f"config field '{name}' must not be negative, got {getattr(self, name)}")
        if not 0 <= self.teacher_occupied <= 1:
            raise ConfigError(f"config field 'teacher_occupied' is a chance, from 0 to 1; got {self.teacher_occupied}")
        if self.teacher_max_turns < 2:
            raise ConfigError(f"config field 'teacher_max_turns': a conversation has at least 2 turns; got "
                              f"{self.teacher_max_turns}")
        if self.projector not in PROJECTORS:
            raise ConfigError(f"config field 'projector': unknown {self.projector!r}; expected {' or '.join(PROJECTORS)}")
        for name in ["stage1_template", "stage2_template"]:
            if getattr(self, name) not in TEMPLATES:
                raise ConfigError(f"config field '{name}': unknown template {getattr(self, name)!r}; "
                                  f"expected one of {', '.join(TEMPLATES)}")
        if self.data_source not in ("shapes", "coco"):
            raise ConfigError(f"config field 'data_source': expected shapes or coco, got {self.data_source!r}")
        if self.lora_r < 0 or self.lora_dropout < 0 or self.lora_alpha <= 0:
            raise ConfigError(f"config fields 'lora_r', 'lora_dropout' must not be negative and 'lora_alpha' must be "
                              f"positive, got {self.lora_r}, {self.lora_dropout}, {self.lora_alpha}")
        if self.lora_4bit and not self.lora_r:
            raise ConfigError("config field 'lora_4bit' needs LoRA: set lora_r > 0 (e.g. lora_r=64)")
        if self.feature_cache_dtype not in ("bf16", "fp16", "fp32"):
            raise ConfigError(f"config field 'feature_cache_dtype': expected bf16, fp16 or fp32, "
                              f"got {self.feature_cache_dtype!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def stage(self, number: int) -> StageConfig:
        """Stage 1 (feature alignment) or stage 2 (end-to-end instruction tuning) as one frozen record."""
        if number == 1:
            return StageConfig(1, self.stage1_steps, self.stage1_batch, self.stage1_lr, self.stage1_template)
        if number == 2:
            return StageConfig(2, self.stage2_steps, self.stage2_batch, self.stage2_lr, self.stage2_template)
        raise ValueError(f"LLaVA trains in stages 1 and 2 (§4.2), not {number}")


PRESETS: dict[str, dict] = {
    # the stand-in LM reads a scene through its cell words, so stage 1 also fits W onto them (ours; align.py)
    "tiny": dict(stage1_cell_word_steps=1000),
    "small": dict(preset="small", data_source="coco", data_dir="data/coco", data_split="val2017", data_images=5000, image_size=224,
                  vision_name="openai/clip-vit-base-patch16", lm_name="HuggingFaceTB/SmolLM2-135M-Instruct",
                  stage1_steps=1000, stage1_batch=32, stage1_lr=1e-3, stage2_steps=3000, stage2_batch=16,
                  stage2_lr=2e-5, max_length=1024, log_every=10, save_every=500,
                  stage2_template="chat"),  # an instruct LM is tuned in its own chat format (ChatML here)
    "paper": dict(preset="paper", data_source="coco", data_dir="data/coco", data_split="train2017", data_images=118_287, image_size=224,
                  vision_name="openai/clip-vit-large-patch14", lm_name="lmsys/vicuna-7b-v1.5", projector="linear",
                  stage1_steps=4650, stage1_batch=128, stage1_lr=2e-3, stage2_steps=14_800, stage2_batch=32,
                  stage2_lr=2e-5, max_length=2048, log_every=10, save_every=1000),
}


def _coerce(name: str, value, kind):
    if kind is bool and isinstance(value, str):  # bool("false") is True: read the word, not its truthiness
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"config field '{name}': expected true or false, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config field '{name}': expected {kind.__name__}, got {value!r}") from None


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``key=value`` strings (the command line's form) → {key: value}, both sides stripped; a later key wins."""
    values = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = (part.strip() for part in item.split("=", 1))
        values[key] = value
    return values


def coerce_fields(cls, values: dict) -> dict:
    """Each value cast to the type of ``cls``'s field of that name; unknown keys and bad values are one-line
    errors, and ``false`` / ``0`` / ``no`` / ``off`` mean False."""
    types = {f.name: type(f.default) for f in fields(cls)}
    for key in values:
        if key not in types:
            raise ConfigError(f"unknown config field {key!r}")
    return {k: _coerce(k, v, types[k]) for k, v in values.items()}


def config_from_overrides(cls, overrides: list[str]):
    """A config dataclass (e.g. ``Stage0Config``) from ``key=value`` strings, parsed as ``load_config`` parses them."""
    return cls(**coerce_fields(cls, parse_overrides(overrides)))


def load_config(preset: str = "tiny", overrides: list[str] | dict | None = None, file: str | Path | None = None) -> Config:
    """Preset, then a YAML/JSON file, then ``key=value`` overrides; every key and value is checked."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    values = dict(PRESETS[preset])
    from_file: set[str] = set()  # keys whose value came from ``file``: their errors name the file
    if file:
        path = Path(file)
        import yaml

        is_yaml = path.suffix in (".yaml", ".yml")
        try:
            text = path.read_text(encoding="utf-8")
            loaded = yaml.safe_load(text) if is_yaml else json.loads(text)
        except (UnicodeDecodeError, ValueError, yaml.YAMLError) as e:  # JSONDecodeError is a ValueError
            raise ConfigError(f"{path}: not valid {'YAML' if is_yaml else 'JSON'} "
                              f"({' '.join(str(e).split())[:200]})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of config fields")
        values.update(loaded)
        from_file = set(loaded)
    if isinstance(overrides, dict):
        values.update(overrides)
        from_file -= set(overrides)
    else:
        parsed = parse_overrides(overrides or [])
        values.update(parsed)
        from_file -= set(parsed)
    try:
        return Config(**coerce_fields(Config, values)).validate()
    except ConfigError as e:
        named = re.match(r"(?:unknown )?config field '(\w+)'", str(e))
        if named and named.group(1) in from_file:
            raise ConfigError(f"{file}: {e}") from None
        raise
