"""Stage 0a: a tiny CLIP, the stand-in for CLIP ViT-L/14 that LLaVA's vision encoder g starts from (§4.1).

CLIP learns its patch features with a symmetric contrastive loss over image–text pairs. Our scenes are so alike
that colour alone would tell most pairs apart, so every scene in a batch comes with a *hard negative* twin that
differs in one object's shape, colour, size or cell: to separate the pair the patch features must carry shape
and position too — what stage 1 later maps into the LM's word space.

A patch's place enters a ViT only through the position embedding added to it at the input. CLIP learns that
embedding; learned here, it came out weak and uneven (norms 0.8–3.5 across the nine cells) and a linear probe
found a patch's cell in 0.79 of patches at the penultimate layer. So our tower's code is fixed and strong instead
(``grid_position_code``, recipe version 10), a departure from CLIP made for the stand-in: see benchmarks/README.md.
"""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import torch
from einops import rearrange
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPModel

from ..data.grid import GRID
from ..data.shapes import COLORS, SHAPES, SIZES, Shape, object_box, render_scene
from ..data.words import join_words
from ..model.backbones import tiny_vision_config
from .schedule import warmup_cosine

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def to_pixels(images: list, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """PIL images (already at model size) → normalised (B, 3, H, W), as CLIPImageProcessor does."""
    x = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) for im in images]))  # (B, H, W, 3)
    x = rearrange(x, "b h w c -> b c h w") / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def twin(layout: list[Shape], rng: random.Random) -> list[Shape]:
    """The same scene with one attribute of one object changed: a hard negative for the contrastive loss."""
    i = rng.randrange(len(layout))
    obj = layout[i]
    what = rng.choice(["shape", "color", "size", "cell"])
    if what == "shape":
        obj = dataclasses.replace(obj, shape=rng.choice([s for s in SHAPES if s != obj.shape]))
    elif what == "color":
        obj = dataclasses.replace(obj, color=rng.choice([c for c in COLORS if c != obj.color]))
    elif what == "size":
        obj = dataclasses.replace(obj, size=[s for s in SIZES if s != obj.size][0])
    else:
        free = [c for c in range(GRID * GRID) if c not in {o.cell for o in layout}]
        obj = dataclasses.replace(obj, cell=rng.choice(free)) if free else \
            dataclasses.replace(obj, shape=rng.choice([s for s in SHAPES if s != obj.shape]))
    return sorted(layout[:i] + [obj] + layout[i + 1:], key=lambda o: o.cell)


def placed_caption(layout: list[Shape]) -> str:
    """'A large red circle at the top left and ...': the caption of a twin, which has no record of its own."""
    text = join_words([f"{o.phrase()} at the {o.position}" for o in layout])
    return text[0].upper() + text[1:] + "."


def clip_pairs(scenes, size: int, rng: random.Random):
    """(pixels, captions) for base scenes and their twins, interleaved: 2·len(scenes) pairs."""
    images, captions = [], []
    for record, layout, image in scenes:
        other = twin(layout, rng)
        boxes = [object_box(o, size, (rng.uniform(-1, 1), rng.uniform(-1, 1))) for o in other]
        images += [image, render_scene(other, boxes, size, rng.randint(225, 250))]
        captions += [rng.choice(record.captions[:2]) if rng.random() < 0.5 else rng.choice(record.captions),
                     placed_caption(other)]
    return to_pixels(images), captions


def grid_position_code(grid: int, dim: int, scale: float) -> torch.Tensor:
    """A fixed 2-D sine–cosine position code for a grid × grid patch layout, in the manner of MAE's ViT (He et al.,
    2022: ``models_mae.py`` keeps its ``pos_embed`` fixed, ``requires_grad=False``): half the channels encode the
    patch's row, half its column, in sine–cosine pairs at frequencies from 1 down to e⁻⁴ (our choice for a grid of
    three steps), shifted by a phase of 0.3 so that row and column 0 are not all-zero sines. Row 0, the CLS token's,
    is zero. Each pair has norm 1, so a patch's code has norm ``scale`` · √(dim / 2). Returns (1 + grid², dim)."""
    half = dim // 2
    freqs = torch.exp(-torch.arange(0, half, 2) / half * 4.0)  # (dim / 4,)
    code = torch.zeros(1 + grid * grid, dim)
    for patch in range(grid * grid):
        for offset, index in zip((0, half), divmod(patch, grid)):  # (row, column)
            code[1 + patch, offset:offset + half:2] = torch.sin(index * freqs + 0.3)
            code[1 + patch, offset + 1:offset + half:2] = torch.cos(index * freqs + 0.3)
    return code * scale


def train_clip(cfg, scenes, tokenizer, log=print) -> CLIPModel:
    """Contrastive pretraining of both towers on (scene, caption) pairs and their hard-negative twins."""
    torch.manual_seed(cfg.seed)
    vision_cfg = tiny_vision_config(cfg.image_size)
    config = CLIPConfig(text_config=dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512,
                                         num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=96,
                                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                         bos_token_id=tokenizer.bos_token_id),
                        vision_config=vision_cfg.to_dict(), projection_dim=128)
    clip = CLIPModel(config)
    if cfg.clip_fixed_position:  # CLIP learns its position embedding; ours is fixed and strong (recipe version 10)
        table = clip.vision_model.embeddings.position_embedding.weight  # (1 + 9, 128)
        with torch.no_grad():
            table.copy_(grid_position_code(GRID, table.shape[1], cfg.clip_fixed_position))
        table.requires_grad_(False)
    opt = torch.optim.AdamW(clip.parameters(), lr=cfg.clip_lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.clip_steps, warmup_steps=100))
    rng = random.Random(cfg.seed)
    bar = tqdm(range(cfg.clip_steps), desc="stage 0a: tiny CLIP")
    for step in bar:
        batch = rng.sample(scenes, cfg.clip_batch)
        pixels, captions = clip_pairs(batch, cfg.image_size, rng)  # (2·clip_batch, 3, H, W), 2·clip_batch texts
        # CLIP's text tower pools at the EOS token, so every caption ends with one
        text = tokenizer([c + tokenizer.eos_token for c in captions], padding=True, return_tensors="pt",
                         add_special_tokens=False)
        out = clip(input_ids=text.input_ids, attention_mask=text.attention_mask, pixel_values=pixels, return_loss=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{out.loss.item():.3f}")
        if step % 100 == 0:
            log(json.dumps({"stage": "0a", "step": step, "loss": round(out.loss.item(), 4)}))
    return clip
