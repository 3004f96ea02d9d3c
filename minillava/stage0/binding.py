"""Stage 0b, phase 4, binding: find "the red circle" by its colour *and* its shape.

The lookup drills start with "What color is the {shape}?" on scenes whose shapes are unique, so the chat LM learns
to find an object by its shape word alone, and keeps doing so: reading the scene as cell words, the recipe-10 LM
answers "Where is the {color} {shape}?" right every time unless another object of the scene has the same shape
(a blue circle beside the asked red circle), and 0.72 of the time when one does; an object sharing only its colour
does not confuse it (``benchmarks/README.md``, "Relations are two lookups"). A relation is two such lookups, so it inherits the miss.
This phase continues the LM on exactly those questions — the teacher's position, size and relation questions whose
first named object shares its shape with another object — with a share of phase 3's dialogues so nothing else is
forgotten, at the review's lower lr.

Measured (``benchmarks/README.md``): at 800 steps those questions go from 122 to 142 of 169 right in text (position
0.93 → 0.98, relation 0.79 → 0.83), but the quickstart's image answers to them do not follow (44 → 42 of 64). At
3,200 steps (the shipped recipe) the LM reads size in text at 0.95 (from 0.66) and relations at 0.86, and its
quickstarts lead those of the LM without it in relations by 0.08 on two seeds. The review (``review``) follows it.
"""

from __future__ import annotations

import functools
import random

import torch
from transformers import LlamaForCausalLM

from ..data.records import ImageRecord
from ..data.teachers import QA, needs_binding, scene_questions
from .lm import FOCUS_KINDS, fit_lm, phase_report, scene_dialogue
from .vocab import cell_words_sample, in_cell_words, scene_in_cell_words

def binding_questions(record: ImageRecord, rng: random.Random) -> list[QA]:
    """The teacher's questions about ``record`` (``scene_questions``) that only colour and shape together answer."""
    return [qa for qa in scene_questions(record, rng) if needs_binding(qa, record)]


def binding_sample(record: ImageRecord, layout, rng: random.Random, where: bool = True) -> dict:
    """A dialogue of one or two ``binding_questions`` about the scene in cell words, in the stage-2 template."""
    qas = binding_questions(record, rng)
    turns = [(qa.question, qa.answer) for qa in rng.sample(qas, min(len(qas), rng.randint(1, 2)))]
    return scene_dialogue(f"binding_{record.image_id}", record, turns, scene_in_cell_words(layout, where))


def binding_chat_lm(cfg, lm, scenes, tokenizer, held_out=None, log=print) -> LlamaForCausalLM:
    """Phase 4: a fresh AdamW on ``binding_sample`` dialogues of the scenes that have such a question, and
    ``lm_binding_mix`` of phase-3 dialogues. Like the review it starts from the LM before it rounded to bf16, so
    ``add_lm_phase`` and a run from scratch take the same steps."""
    lm.to(torch.bfloat16).to(torch.float32)
    torch.manual_seed(cfg.seed + 11)
    where = cfg.lm_cells_where
    kinds = FOCUS_KINDS + ("color",) * cfg.lm_cells_color
    # the question set does not depend on the draw: a uniquely named object that shares its shape is always asked
    # where it is, so these are the scenes that have one
    busy = [(record, layout) for record, layout, _ in scenes if binding_questions(record, random.Random(0))]
    steps = cfg.lm_binding_steps
    report = phase_report("0b-binding", steps, lm, tokenizer, held_out, log,
                          in_words=functools.partial(in_cell_words, where=where))

    def draw(rng: random.Random) -> dict:
        if rng.random() < cfg.lm_binding_mix:
            record, layout = rng.choice(scenes)[:2]
            return cell_words_sample(record, layout, rng, where, kinds)
        record, layout = rng.choice(busy)
        return binding_sample(record, layout, rng, where)
    return fit_lm(lm, tokenizer, draw, random.Random(cfg.seed + 11), steps=steps, batch=cfg.lm_binding_batch,
                  lr=cfg.lm_binding_lr, warmup=0.05, max_length=cfg.max_length, desc="stage 0b: chat LM, binding",
                  report=report, share_prefix=cfg.lm_share_prefix)
