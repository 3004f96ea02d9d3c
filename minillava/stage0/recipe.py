"""Stage 0 (tiny preset only): make the "released checkpoints" that LLaVA takes for granted.

LLaVA starts from CLIP ViT-L/14 (contrastive pretraining on 400M image–text pairs) and Vicuna (an instruction-
tuned LLaMA). Offline on a CPU we have neither, so this recipe trains stand-ins on the embedded scenes:

1. a byte-level BPE tokenizer on the scenes' captions and instruction text;
2. a tiny CLIP (vision + text towers, symmetric contrastive loss), with *hard negatives*: every scene in a batch
   comes with a twin that differs in one object's shape, colour, size or cell, so colour alone cannot tell the
   pairs apart and the patch features must carry shape and position too;
3. a tiny chat LM trained on text only, in the stage-2 template, to answer questions about a scene *described in
   words* — the skill LLaVA inherits from Vicuna and transfers to image tokens in stage 2. A second phase
   (``lm_focus_steps``) drills the kinds phase 1 leaves at the majority answer (existence, position, relations);
   a third (``lm_cells_steps``) writes the scene as nine *cell words*, one per grid cell, each naming what stands
   in it and where ("<top-left:large-red-circle>"): the text twin of the tower's nine patch tokens, so that
   stage 1 can map each patch onto a word the LM already reads.

Checks (``recipe.json``): linear probes on the frozen patch features (colour / shape / size / occupancy per
cell, and which cell a patch sits in) and the LM's text-only exact-match accuracy against the majority answer.
The result is shipped in ``minillava/assets/tiny`` and is what ``minillava quickstart`` starts from.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPModel, LlamaForCausalLM

from .conversation import get_template, tokenize_conversation
from .data.prompts import BRIEF_PROMPTS, DETAIL_PROMPTS
from .data.shapes import COLORS, GRID, POSITIONS, SHAPES, SIZES, Shape, generate_split, object_box, render_scene
from .data.teachers import QA, answer_is_correct, describe_scene, reasoning_question, scene_questions
from .data.llava_json import make_sample
from .data.words import a
from .model.backbones import image_processor_class, tiny_lm_config, tiny_vision_config, train_tiny_tokenizer

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


@dataclass
class Stage0Config:
    seed: int = 0
    image_size: int = 96
    scenes: int = 8000          # base scenes (train bucket only: held-out layouts are never seen)
    vocab_size: int = 600
    clip_steps: int = 800
    clip_batch: int = 128       # base scenes per batch; each brings a hard-negative twin (256 images)
    clip_lr: float = 1e-3
    lm_steps: int = 2500
    lm_batch: int = 24
    lm_lr: float = 2e-3
    max_length: int = 256
    # phase 2 of the chat LM: short QA dialogues weighted to the kinds phase 1 left at the majority answer
    lm_focus_steps: int = 2000          # 0 = phase 1 only (the recipe before 2026-11-26, hash 7625c17986d6)
    lm_focus_batch: int = 32
    lm_focus_lr: float = 2e-3
    # phase 3: the scene as nine cell words, the text twin of the 3×3 patch tokens
    lm_cells_steps: int = 5000          # 0 = no cell-word phase (the recipe before 2026-11-27, hash d7c0d1faeea4)
    lm_cells_batch: int = 32
    lm_cells_lr: float = 2e-3
    lm_cells_where: bool = True         # each cell word also names its cell: "<top-left:large-red-circle>"
    lm_cells_color: bool = False        # its focus dialogues also drill "What color is the {shape}?"

    def hash(self) -> str:
        """Identifies the recipe: the shipped weights record it, and a test compares it with the code's.

        With the focus phase off its settings are left out, so a phase-1-only recipe keeps the hash it had before
        the option existed (``add_lm_phase`` checks a directory against it); likewise the later switches while off."""
        fields = dataclasses.asdict(self)
        for switch in ("lm_cells_where", "lm_cells_color"):
            if not fields[switch]:
                del fields[switch]
        for phase in ("lm_focus_", "lm_cells_"):
            if not fields[phase + "steps"]:
                fields = {k: v for k, v in fields.items() if not k.startswith(phase)}
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


# --- scenes as tensors ----------------------------------------------------------------------------------------

def to_pixels(images: list, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """PIL images (already at model size) → normalised (B, 3, H, W), as CLIPImageProcessor does."""
    x = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) for im in images])).permute(0, 3, 1, 2) / 255
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
    from .data.words import join_words
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


# --- 1. tokenizer -----------------------------------------------------------------------------------------------

def corpus(scenes) -> list[str]:
    from .conversation import VICUNA_SYSTEM
    texts = [VICUNA_SYSTEM, *BRIEF_PROMPTS, *DETAIL_PROMPTS, "Scene:", "USER: ASSISTANT:"]
    for record, _, _ in scenes:
        texts += record.captions + [describe_scene(record)]
        rng = random.Random(record.image_id)
        texts += [f"{qa.question} {qa.answer}" for qa in scene_questions(record, rng)]
        qa = reasoning_question(record, rng)
        texts.append(f"{qa.question} {qa.answer}")
    return texts


# --- 2. tiny CLIP -----------------------------------------------------------------------------------------------

def train_clip(cfg: Stage0Config, scenes, tokenizer, log=print) -> CLIPModel:
    torch.manual_seed(cfg.seed)
    vision_cfg = tiny_vision_config(cfg.image_size)
    config = CLIPConfig(text_config=dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512,
                                         num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=96,
                                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                         bos_token_id=tokenizer.bos_token_id),
                        vision_config=vision_cfg.to_dict(), projection_dim=128)
    clip = CLIPModel(config)
    opt = torch.optim.AdamW(clip.parameters(), lr=cfg.clip_lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / cfg.clip_steps)))
    rng = random.Random(cfg.seed)
    bar = tqdm(range(cfg.clip_steps), desc="stage 0a: tiny CLIP")
    for step in bar:
        batch = rng.sample(scenes, cfg.clip_batch)
        pixels, captions = clip_pairs(batch, cfg.image_size, rng)
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


@torch.no_grad()
def probe_features(vision, scenes_train, scenes_test, image_size: int, select_layer: int = -2) -> dict[str, float]:
    """Linear probes on frozen per-patch features: can a linear map read each cell's contents and its place?"""
    from .model.vision import encode_images

    def features(scenes):
        feats = torch.cat([encode_images(vision, to_pixels([s[2] for s in scenes[i:i + 256]]), select_layer)
                           for i in range(0, len(scenes), 256)])  # (B, 9, D)
        labels = {k: torch.full((len(scenes), GRID * GRID), -1, dtype=torch.long) for k in
                  ("occupied", "color", "shape", "size")}
        labels["cell"] = torch.arange(GRID * GRID).repeat(len(scenes), 1)  # does a patch know where it is?
        for b, (_, layout, _) in enumerate(scenes):
            labels["occupied"][b] = 0
            for o in layout:
                labels["occupied"][b, o.cell] = 1
                labels["color"][b, o.cell] = list(COLORS).index(o.color)
                labels["shape"][b, o.cell] = SHAPES.index(o.shape)
                labels["size"][b, o.cell] = list(SIZES).index(o.size)
        return feats.reshape(-1, feats.shape[-1]), {k: v.reshape(-1) for k, v in labels.items()}

    x_tr, y_tr = features(scenes_train)
    x_te, y_te = features(scenes_test)
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
    result = {}
    for task in y_tr:
        keep_tr, keep_te = y_tr[task] >= 0, y_te[task] >= 0
        n_cls = int(y_tr[task][keep_tr].max()) + 1
        with torch.enable_grad():
            w = torch.zeros(x_tr.shape[1], n_cls, requires_grad=True)
            b = torch.zeros(n_cls, requires_grad=True)
            opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                loss = F.cross_entropy(x_tr[keep_tr] @ w + b, y_tr[task][keep_tr]) + 1e-3 * w.pow(2).sum()
                loss.backward()
                return loss
            opt.step(closure)
        pred = (x_te[keep_te] @ w + b).argmax(-1)
        result[task] = round((pred == y_te[task][keep_te]).float().mean().item(), 4)
        result[f"{task}_majority"] = round(Counter(y_te[task][keep_te].tolist()).most_common(1)[0][1]
                                           / int(keep_te.sum()), 4)
    return result


# --- 3. tiny chat LM ------------------------------------------------------------------------------------------

def scene_in_words(record) -> str:
    """What stands in for the image in every text-only dialogue: 'Scene: A large red circle at the top left, ...'"""
    return f"Scene: {record.captions[1]}"


def text_sample(record, rng: random.Random, scene: str | None = None) -> dict:
    """A text-only dialogue about a scene given in words, in the stage-2 template (the image is a sentence)."""
    scene = scene or scene_in_words(record)
    kind = rng.random()
    if kind < 0.6:
        qas = scene_questions(record, rng)
        turns = [(q.question, q.answer) for q in qas[:rng.randint(2, min(5, len(qas)))]]
    elif kind < 0.75:
        turns = [(rng.choice(DETAIL_PROMPTS), describe_scene(record))]
    elif kind < 0.9:
        qa = reasoning_question(record, rng)
        turns = [(qa.question, qa.answer)]
    else:
        turns = [(rng.choice(BRIEF_PROMPTS), rng.choice(record.captions))]
    sample = make_sample(f"text_{record.image_id}", record.file_name, turns)
    first = sample["conversations"][0]
    first["value"] = first["value"].replace("<image>", scene)
    return sample


def collate(items: list[dict], pad_id: int) -> dict:
    length = max(len(x["input_ids"]) for x in items)
    ids = torch.full((len(items), length), pad_id)
    labels = torch.full((len(items), length), -100)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    for i, x in enumerate(items):
        n = len(x["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = x["input_ids"], x["labels"], 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def fit_lm(lm, tokenizer, draw, rng: random.Random, *, steps: int, batch: int, lr: float, warmup: float,
           max_length: int, desc: str, report) -> LlamaForCausalLM:
    """AdamW + warmup/cosine on text dialogues ``draw(rng)`` in the stage-2 template; ``report(step, loss)`` logs."""
    template = get_template("vicuna_v1")
    opt = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    warm = max(1, int(warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    bar = tqdm(range(steps), desc=desc)
    for step in bar:
        samples = [draw(rng) for _ in range(batch)]  # a sample may bring its own template (stage-1 "plain")
        items = [tokenize_conversation(x, tokenizer, x.pop("template", template), image_tokens=1,
                                       max_length=max_length) for x in samples]
        loss = lm(**{k: v.to(lm.device) for k, v in collate(items, tokenizer.pad_token_id).items()}).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        report(step, loss.item())
    return lm


def train_chat_lm(cfg: Stage0Config, scenes, tokenizer, log=print) -> LlamaForCausalLM:
    torch.manual_seed(cfg.seed)
    lm = LlamaForCausalLM(tiny_lm_config(len(tokenizer), tokenizer))

    def report(step: int, loss: float) -> None:
        if step % 100 == 0:
            log(json.dumps({"stage": "0b", "step": step, "loss": round(loss, 4)}))
    return fit_lm(lm, tokenizer, lambda rng: text_sample(rng.choice(scenes)[0], rng), random.Random(cfg.seed + 1),
                  steps=cfg.lm_steps, batch=cfg.lm_batch, lr=cfg.lm_lr, warmup=0.03, max_length=cfg.max_length,
                  desc="stage 0b: tiny chat LM", report=report)


# Kinds that need the LM to find a named object in the scene text and read an attribute *not* next to the
# name (size), check a colour+shape pair against every object (exists) or combine two cells (relation).
# Phase 1 left them at the majority answer ("small", "yes"): the lookup is learned late, after a plateau.
FOCUS_KINDS = ("exists", "size", "relation", "position")


def focus_sample(record, rng: random.Random, scene: str | None = None, kinds=FOCUS_KINDS) -> dict:
    """A short text-only dialogue (1–3 turns) that asks mostly about ``kinds``; the scene is in words.

    "No" exists-questions name an absent pair that shares its colour or its shape with an object in the scene,
    so matching one word is not enough (the teacher's random absent pair usually shares neither)."""
    qas = scene_questions(record, rng)
    focus = [q for q in qas if q.kind in kinds]
    present = {f"{o.color} {o.category}" for o in record.objects}
    near = [f"{c} {s}" for c in COLORS for s in SHAPES if f"{c} {s}" not in present
            and any(c == o.color or s == o.category for o in record.objects)]
    if near and rng.random() < 0.5:
        miss = rng.choice(near)
        focus.append(QA(f"Is there {a(miss)} in the image?", f"No, there is no {miss}.", "exists", "no"))
    pool = focus if focus and rng.random() < 0.75 else qas
    turns = [(q.question, q.answer) for q in rng.sample(pool, min(len(pool), rng.randint(1, 3)))]
    sample = make_sample(f"focus_{record.image_id}", record.file_name, turns)
    sample["conversations"][0]["value"] = sample["conversations"][0]["value"].replace("<image>",
                                                                                      scene or scene_in_words(record))
    return sample


def focus_chat_lm(cfg: Stage0Config, lm, scenes, tokenizer, held_out=None, log=print) -> LlamaForCausalLM:
    """Phase 2: a fresh AdamW on ``focus_sample`` dialogues, 3 in 10 of them phase-1 samples so nothing is forgotten.

    It starts from the phase-1 LM rounded to bf16, i.e. from exactly the weights a phase-1-only recipe would
    ship, so a run continued from shipped weights and a run from scratch take the same steps."""
    lm.to(torch.bfloat16).to(torch.float32)
    torch.manual_seed(cfg.seed + 2)
    steps = cfg.lm_focus_steps

    def report(step: int, loss: float) -> None:
        if step % 100 == 0 or step == steps - 1:
            row = {"stage": "0b-focus", "step": step, "loss": round(loss, 4)}
            if held_out is not None and (step % 200 == 0 or step == steps - 1):
                row["text_qa"] = {k: v["accuracy"] for k, v in text_qa_accuracy(lm, tokenizer, held_out, 300).items()}
            log(json.dumps(row))
    return fit_lm(lm, tokenizer,
                  lambda rng: (focus_sample if rng.random() < 0.7 else text_sample)(rng.choice(scenes)[0], rng),
                  random.Random(cfg.seed + 2), steps=steps, batch=cfg.lm_focus_batch, lr=cfg.lm_focus_lr,
                  warmup=0.05, max_length=cfg.max_length, desc="stage 0b: chat LM, focus phase", report=report)


# Phase 3: the scene as nine *cell words*, one per grid cell in row-major order ("<large-red-circle><empty>...").
# It is the text twin of the image: the tiny tower gives one patch token per cell, in the same order. An LM that
# answers from nine cell words has the reading circuit stage 2 needs, and stage 1 gets a concrete target: W can map
# each patch onto the word for what stands in its cell — §4.2's "visual tokenizer for the frozen LLM", made literal.
#
# With ``where`` each word also names its cell ("<top-left:large-red-circle>", 9 × 73 words), as a patch token
# carries its place (CLIP adds a position embedding to every patch). The LM's rotary positions rotate queries and
# keys but add nothing to the values it copies, so "which of the nine am I reading" is otherwise not in the token.
EMPTY_CELL = "<empty>"
WHATS = [EMPTY_CELL] + [f"<{size}-{color}-{shape}>" for size in SIZES for color in COLORS for shape in SHAPES]


def cell_word(what: str, cell: int | None, where: bool = False) -> str:
    return f"<{POSITIONS[cell].replace(' ', '-')}:{what[1:]}" if where else what


def _what_and_cell(where: bool) -> list[tuple[str, int | None]]:
    """What each cell word names: (what, cell), cell None without ``where``."""
    return [(what, cell) for cell in (range(GRID * GRID) if where else [None]) for what in WHATS]


def cell_words(where: bool = False) -> list[str]:
    """Every cell word: ``WHATS`` (73), or with ``where`` each of them in each of the nine cells (657)."""
    return [cell_word(what, cell, where) for what, cell in _what_and_cell(where)]


def scene_in_cell_words(layout: list[Shape], where: bool = False) -> str:
    """Nine words, one per cell, top left to bottom right: what a 3×3 grid of patch tokens shows."""
    whats = {o.cell: f"<{o.size}-{o.color}-{o.shape}>" for o in layout}
    return "".join(cell_word(whats.get(c, EMPTY_CELL), c, where) for c in range(GRID * GRID))


def in_cell_words(record, layout: list[Shape], where: bool = False) -> str:
    """``text_qa_accuracy``'s ``in_words`` for the cell-word form."""
    return scene_in_cell_words(layout, where)


def add_cell_words(lm, tokenizer, where: bool = False) -> None:
    """Register ``cell_words(where)`` as whole words; each new embedding row starts near what it means: the mean
    of the pieces it names ("<large-red-circle>": " large", " red", " circle"), plus with ``where`` the mean of
    its cell's name (" top", " left")."""
    def mean(text: str, table):
        return table[tokenizer(" " + text, add_special_tokens=False)["input_ids"]].mean(0)

    tokenizer.add_tokens(cell_words(where))
    lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for table in (lm.get_input_embeddings().weight, lm.get_output_embeddings().weight):
            for what, cell in _what_and_cell(where):
                start = mean(what[1:-1].replace("-", " ") if what != EMPTY_CELL else "nothing", table)
                if cell is not None:
                    start = start + mean(POSITIONS[cell], table)
                table[tokenizer.convert_tokens_to_ids(cell_word(what, cell, where))] = start


def cell_words_sample(record, layout, rng: random.Random, where: bool = False, kinds=FOCUS_KINDS) -> dict:
    """Phase-3 dialogue: a phase-1 or focus dialogue about the scene in cell words, or (1 in 5) a stage-1 sample
    in the ``plain`` template — cell words then a caption — the very task stage 1 sets the projector."""
    scene = scene_in_cell_words(layout, where)
    roll = rng.random()
    if roll < 0.2:
        sample = make_sample(f"cells_{record.image_id}", record.file_name, [("<image>", rng.choice(record.captions))])
        sample["conversations"][0]["value"] = scene
        return {**sample, "template": dataclasses.replace(get_template("plain"), keep_question=True)}
    if roll < 0.6:
        return text_sample(record, rng, scene=scene)
    return focus_sample(record, rng, scene=scene, kinds=kinds)


def cell_words_chat_lm(cfg: "Stage0Config", lm, scenes, tokenizer, held_out=None, log=print) -> LlamaForCausalLM:
    """Phase 3: a fresh AdamW on ``cell_words_sample`` dialogues (the tokenizer gains ``cell_words``)."""
    lm.to(torch.bfloat16).to(torch.float32)
    torch.manual_seed(cfg.seed + 3)
    where = cfg.lm_cells_where
    in_words = functools.partial(in_cell_words, where=where)
    add_cell_words(lm, tokenizer, where)
    steps = cfg.lm_cells_steps

    def report(step: int, loss: float) -> None:
        if step % 100 == 0 or step == steps - 1:
            row = {"stage": "0b-cells", "step": step, "loss": round(loss, 4)}
            if held_out is not None and (step % 500 == 0 or step == steps - 1):
                row["text_qa"] = {k: v["accuracy"] for k, v in
                                  text_qa_accuracy(lm, tokenizer, held_out, 300, in_words).items()}
            log(json.dumps(row))
    kinds = FOCUS_KINDS + ("color",) * cfg.lm_cells_color
    return fit_lm(lm, tokenizer, lambda rng: cell_words_sample(*rng.choice(scenes)[:2], rng, where, kinds),
                  random.Random(cfg.seed + 3), steps=steps, batch=cfg.lm_cells_batch, lr=cfg.lm_cells_lr,
                  warmup=0.05, max_length=cfg.max_length, desc="stage 0b: chat LM, cell words", report=report)


@torch.no_grad()
def text_qa_accuracy(lm, tokenizer, scenes, max_questions: int = 600, in_words=None) -> dict:
    """Exact-match accuracy per question kind when the scene is given in words, and the majority baseline.

    ``in_words(record, layout)`` writes the scene (default: the sentence of ``scene_in_words``)."""
    in_words = in_words or (lambda record, layout: scene_in_words(record))
    from .conversation import prompt_ids
    template = get_template("vicuna_v1")
    lm.eval()
    rows = []
    for record, layout, _ in scenes:
        rng = random.Random(record.image_id)
        for qa in scene_questions(record, rng)[:3]:
            rows.append((in_words(record, layout), qa))
    rows = rows[:max_questions]
    correct, answers_by_kind = Counter(), {}
    total = Counter()
    for i in range(0, len(rows), 64):
        chunk = rows[i:i + 64]
        prompts = [prompt_ids(f"{scene}\n{qa.question}", tokenizer, template, image_tokens=1)
                   for scene, qa in chunk]
        length = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), length), tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        for j, p in enumerate(prompts):  # left padding for generation
            ids[j, length - len(p):], mask[j, length - len(p):] = p, 1
        out = lm.generate(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), max_new_tokens=24,
                          do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        for (_, qa), seq in zip(chunk, out[:, length:]):
            text = tokenizer.decode(seq, skip_special_tokens=True)
            total[qa.kind] += 1
            correct[qa.kind] += answer_is_correct(qa, text)
            answers_by_kind.setdefault(qa.kind, []).append(qa.key)
    lm.train()
    result = {}
    for kind in sorted(total):
        majority = Counter(answers_by_kind[kind]).most_common(1)[0][1] / total[kind]
        result[kind] = {"accuracy": round(correct[kind] / total[kind], 3), "majority": round(majority, 3),
                        "n": total[kind]}
    return result


# --- the whole recipe ---------------------------------------------------------------------------------------------

def recipe_scenes(cfg: Stage0Config):
    """The recipe's training scenes (train bucket) and the held-out ones its checks use (val bucket)."""
    return (generate_split(cfg.scenes, "train", seed=10_000 + cfg.seed, size_px=cfg.image_size),
            generate_split(max(200, cfg.scenes // 20), "val", seed=10_000 + cfg.seed, size_px=cfg.image_size))


def run_stage0(out_dir: str | Path, cfg: Stage0Config | None = None, log=print) -> dict:
    """Train tokenizer, tiny CLIP and tiny chat LM; save them (bf16 safetensors) with ``recipe.json``."""
    cfg = cfg or Stage0Config()
    out_dir = Path(out_dir)
    start = time.perf_counter()
    scenes, held_out = recipe_scenes(cfg)
    tokenizer = train_tiny_tokenizer(corpus(scenes), cfg.vocab_size)
    seconds = {"scenes_and_tokenizer": time.perf_counter() - start}

    t = time.perf_counter()
    clip = train_clip(cfg, scenes, tokenizer, log)
    seconds["clip"] = time.perf_counter() - t
    probes = probe_features(clip.vision_model, scenes[:2000], held_out, cfg.image_size)
    log(json.dumps({"stage": "0a", "probes": probes}))

    t = time.perf_counter()
    lm = train_chat_lm(cfg, scenes, tokenizer, log)
    seconds["lm"] = time.perf_counter() - t
    phase1_qa = None
    if cfg.lm_focus_steps:
        phase1_qa = text_qa_accuracy(lm, tokenizer, held_out)
        log(json.dumps({"stage": "0b", "text_qa_phase1": phase1_qa}))
        t = time.perf_counter()
        lm = focus_chat_lm(cfg, lm, scenes, tokenizer, held_out, log)
        seconds["lm_focus"] = time.perf_counter() - t
    if cfg.lm_cells_steps:
        t = time.perf_counter()
        lm = cell_words_chat_lm(cfg, lm, scenes, tokenizer, held_out, log)
        seconds["lm_cells"] = time.perf_counter() - t
    qa = text_qa_report(cfg, lm, tokenizer, held_out)
    log(json.dumps({"stage": "0b", **qa}))

    from transformers import CLIPVisionModel
    vision = CLIPVisionModel(clip.config.vision_config)
    vision.load_state_dict(clip.vision_model.state_dict())
    (out_dir / "vision").mkdir(parents=True, exist_ok=True)
    vision.to(torch.bfloat16).save_pretrained(out_dir / "vision")
    image_processor_class()(size={"shortest_edge": cfg.image_size}, crop_size={"height": cfg.image_size,
                       "width": cfg.image_size}, image_mean=CLIP_MEAN, image_std=CLIP_STD).save_pretrained(out_dir / "vision")
    lm.to(torch.bfloat16).save_pretrained(out_dir / "lm")
    tokenizer.save_pretrained(out_dir / "lm")
    seconds["total"] = time.perf_counter() - start
    recipe = {"config": dataclasses.asdict(cfg), "config_hash": cfg.hash(), "seconds": {k: round(v, 1) for k, v in
              seconds.items()}, "probes": probes, **qa, "torch": torch.__version__,
              "machine": "2 CPU cores" if torch.get_num_threads() <= 2 else f"{torch.get_num_threads()} CPU threads"}
    if phase1_qa:
        recipe["text_qa_phase1"] = phase1_qa
    recipe["files"] = shipped_file_hashes(out_dir)
    (out_dir / "recipe.json").write_text(json.dumps(recipe, indent=1))
    return recipe


def add_lm_phase(out_dir: str | Path, cfg: Stage0Config, log=print, device: str = "cpu") -> dict:
    """Run only the last chat-LM phase ``cfg`` switches on (focus, then cells) on a recipe directory made by the
    same config without it; its tower, tokenizer and earlier phases are kept.

    Equal to ``run_stage0(out_dir, cfg)`` from scratch, because each phase starts from the LM before it rounded to
    bf16 — which is what the directory holds — and uses the same scenes and seeds (on the same kind of device); it
    saves the hour of retraining the tower and the earlier phases. This is how the shipped LM got its focus and
    cell-word phases (the latter on a GPU: ``device="cuda"``)."""
    from transformers import AutoTokenizer
    out_dir = Path(out_dir)
    recipe = json.loads((out_dir / "recipe.json").read_text())
    phases = [name for name in ("focus", "cells") if getattr(cfg, f"lm_{name}_steps")]
    if not phases:
        raise ValueError(f"{out_dir}: this config has no chat-LM phase after phase 1 to add")
    last = phases[-1]
    before = dataclasses.replace(cfg, **{f"lm_{last}_steps": 0})
    if recipe["config_hash"] != before.hash():
        raise ValueError(f"{out_dir}: recipe {recipe['config_hash']} is not this config without its {last} phase")
    scenes, held_out = recipe_scenes(cfg)
    tokenizer = AutoTokenizer.from_pretrained(out_dir / "lm")
    lm = LlamaForCausalLM.from_pretrained(out_dir / "lm", dtype=torch.float32).to(device)
    t = time.perf_counter()
    if last == "focus":
        recipe["text_qa_phase1"] = recipe["text_qa"]
        lm = focus_chat_lm(cfg, lm, scenes, tokenizer, held_out, log)
    else:
        lm = cell_words_chat_lm(cfg, lm, scenes, tokenizer, held_out, log)
    recipe["seconds"][f"lm_{last}"] = round(time.perf_counter() - t, 1)
    machine = torch.cuda.get_device_name(device) if str(device).startswith("cuda") else \
        f"{torch.get_num_threads()} CPU threads"
    recipe.setdefault("machines", {})[f"lm_{last}"] = f"{machine}, torch {torch.__version__}"  # what seconds mean
    recipe["seconds"]["total"] = round(recipe["seconds"]["total"] + recipe["seconds"][f"lm_{last}"], 1)
    recipe.update(text_qa_report(cfg, lm, tokenizer, held_out))
    recipe.update(config=dataclasses.asdict(cfg), config_hash=cfg.hash())
    lm.to(torch.bfloat16).save_pretrained(out_dir / "lm")
    tokenizer.save_pretrained(out_dir / "lm")
    recipe["files"] = shipped_file_hashes(out_dir)
    (out_dir / "recipe.json").write_text(json.dumps(recipe, indent=1))
    return recipe


def text_qa_report(cfg: Stage0Config, lm, tokenizer, held_out) -> dict:
    """The recipe's check of the chat LM: text-only QA with the scene as a sentence, and as cell words."""
    report = {"text_qa": text_qa_accuracy(lm, tokenizer, held_out)}
    if cfg.lm_cells_steps:
        report["text_qa_cells"] = text_qa_accuracy(
            lm, tokenizer, held_out, in_words=functools.partial(in_cell_words, where=cfg.lm_cells_where))
    return report


def shipped_file_hashes(out_dir: str | Path) -> dict[str, str]:
    """sha1 of every weight file, so a check can tell when shipped weights and recipe.json part ways."""
    out_dir = Path(out_dir)
    return {str(p.relative_to(out_dir)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(out_dir.rglob("*.safetensors"))}
