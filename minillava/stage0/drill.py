"""Stage 0b, the lookup drill: the chat LM's first lesson, before anything that rewards a shortcut.

"What color is the {shape}?" about a scene in cell words is a lookup: find the word whose shape matches, copy its
colour. Trained in a mix with easier targets, a tiny LM settles instead on a shortcut — name a colour that is
present — which is always right on one-object scenes and right ~0.6 of the time on the recipe's 1–4-object
scenes, and once there it stays (``benchmarks/README.md``, "The toy's setting on the real chat LM"). So the drill
comes first, from a fresh LM, on busy scenes (3–6 objects, where the shortcut pays least), one question per
dialogue and no system prompt (the shortest sequence that still has the task); the cell-word mix (``vocab``) then
keeps a share of drill dialogues so the lookup is not unlearned.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import random

import torch
from transformers import LlamaForCausalLM

from ..conversation import IMAGE_TOKEN, get_template, prompt_ids
from ..data.llava_json import make_sample
from ..data.shapes import COLORS, Shape, generate_split
from .lm import fit_lm
from .vocab import add_cell_words, scene_in_cell_words

NO_PROMPT = dataclasses.replace(get_template("vicuna_v1"), system="")  # the Vicuna template, empty system prompt


def drill_scenes(cfg) -> list:
    """The drill's training scenes: ``cfg.scenes`` train-bucket scenes of ``lm_drill_min_objects`` to
    ``lm_drill_max_objects`` objects, drawn from 1–max-object scenes with their own seed; the sparser ones and those
    whose every shape comes twice (nothing to ask) are dropped."""
    lo, hi = cfg.lm_drill_min_objects, cfg.lm_drill_max_objects
    scenes = generate_split(cfg.scenes * 3, "train", seed=20_000 + cfg.seed, size_px=cfg.image_size, max_objects=hi)
    return [scene for scene in scenes if lo <= len(scene[1]) and colour_questions(scene[1])][:cfg.scenes]


def colour_questions(layout: list[Shape]) -> list[tuple[str, str]]:
    """(question, answer) for every object whose shape is unique in the scene, in the teacher's words."""
    shapes = collections.Counter(o.shape for o in layout)
    return [(f"What color is the {o.shape}?", f"The {o.shape} is {o.color}.") for o in layout if shapes[o.shape] == 1]


def drill_sample(layout: list[Shape], rng: random.Random, where: bool = True) -> dict:
    """One colour question about a scene in cell words, in the Vicuna template without its system prompt."""
    question, answer = rng.choice(colour_questions(layout))
    sample = make_sample("drill", "scene.png", [(question, answer)])
    sample["conversations"][0]["value"] = sample["conversations"][0]["value"].replace(
        IMAGE_TOKEN, scene_in_cell_words(layout, where))
    return {**sample, "template": NO_PROMPT}


@torch.no_grad()
def colour_lookup_accuracy(lm, tokenizer, held_out, where: bool = True, max_questions: int = 300) -> float:
    """The drill's check: on held-out scenes of 2+ objects, is the asked object's colour the likeliest of the six
    after "The {shape} is" (teacher-forced, full template)? Naming a colour present scores ~0.45 here."""
    template = get_template("vicuna_v1")
    rows = [(layout, q, a) for _, layout, _ in held_out if len(layout) > 1 for q, a in colour_questions(layout)]
    rows = rows[:max_questions]
    colours = list(COLORS)
    colour_ids = [tokenizer(" " + c, add_special_tokens=False)["input_ids"][0] for c in colours]  # one token each
    lm.eval()
    right = 0
    for layout, question, answer in rows:
        shape = question.split()[-1].rstrip("?")
        ids = prompt_ids(f"{scene_in_cell_words(layout, where)}\n{question}", tokenizer, template, image_tokens=1)
        ids = torch.cat([ids, torch.tensor(tokenizer(f" The {shape} is", add_special_tokens=False)["input_ids"])])
        logits = lm(input_ids=ids[None].to(lm.device)).logits[0, -1, colour_ids]
        right += colours[int(logits.argmax())] == answer.split()[-1].rstrip(".")
    lm.train()
    return round(right / max(len(rows), 1), 3)


def drill_chat_lm(cfg, lm, layouts: list, tokenizer, held_out=None, log=print) -> LlamaForCausalLM:
    """The drill: ``lm_drill_steps`` of ``drill_sample`` dialogues on ``layouts`` (``drill_scenes``); the LM
    gains its cell words here, each row started from the words it names (``add_cell_words``)."""
    where = cfg.lm_cells_where
    add_cell_words(lm, tokenizer, where)
    torch.manual_seed(cfg.seed + 4)
    steps = cfg.lm_drill_steps

    def report(step: int, loss: float) -> None:
        if step % 100 == 0 or step == steps - 1:
            row = {"stage": "0b-drill", "step": step, "loss": round(loss, 4)}
            if held_out is not None and (step % 250 == 0 or step == steps - 1):
                row["colour_lookup"] = colour_lookup_accuracy(lm, tokenizer, held_out, where)
            log(json.dumps(row))
    return fit_lm(lm, tokenizer, lambda rng: drill_sample(rng.choice(layouts), rng, where), random.Random(cfg.seed + 4),
                  steps=steps, batch=cfg.lm_drill_batch, lr=cfg.lm_drill_lr, warmup=0.05, max_length=cfg.max_length,
                  desc="stage 0b: chat LM, lookup drill", report=report, share_prefix=cfg.lm_share_prefix)
