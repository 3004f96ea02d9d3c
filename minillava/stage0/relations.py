"""Stage 0b, worked relations, the chat LM's last phase: "Where is the {A} relative to the {B}?" answered with both
objects' cells first, then the relation ("The red circle is at the top left and the blue square is at the center, so
the red circle is above and to the left of the blue square.": ``data.teachers.relation_answer(worked=True)``).

A relation is two lookups and a comparison. After the review the LM finds each object's cell (position in cell words
0.98 or more) but answers relations at 0.895 (749 held-out questions): it adds a direction that is not there
("below" → "below and to the right of"), most often for two objects in one row or column (0.851). Asking relations
more often, answered plainly, lifts those pairs and lowers the diagonal ones (0.916 in all). Written out, the two
cells are words just before the answer, and the comparison is of words the LM has in view: 0.975 (one row or column
0.964, diagonal 0.986), the other kinds within 0.02 (``benchmarks/README.md``, "Worked relations").
It is the paper's reasoning-first order (§5.2, Table 8) on a small scale; the rule teacher answers relations the same
way in stage 2 (``TrainConfig.teacher_worked_relations``), so the image is asked what the LM learned to read.

Half its dialogues ask one or two relation questions (a pair in one row or column half the time, where the scene has
one), the rest are phase 3's, their relations worked too, so nothing else is forgotten."""

from __future__ import annotations

import functools
import random

import torch
from transformers import LlamaForCausalLM

from ..data.teachers import QA, scene_questions
from .lm import FOCUS_KINDS, fit_lm, phase_report, scene_dialogue
from .vocab import cell_words_sample, in_cell_words, scene_in_cell_words

LINE_SHARE = 0.5  # the share of relation questions about two objects in one row or column, where a scene has both


def relation_questions(record, rng: random.Random, worked: bool = True) -> dict[str, list[QA]]:
    """The teacher's relation questions about ``record`` over four draws (``worked``: answered both cells first), by
    kind of pair: "line" (the two objects share a row or column: one direction) and "diag" (two directions). Empty for
    scenes with no pair."""
    by_pair = {}
    for _ in range(4):
        for qa in scene_questions(record, random.Random(rng.random()), worked=worked):
            if qa.kind == "relation":
                by_pair.setdefault("diag" if " and " in qa.key else "line", []).append(qa)
    return by_pair


def relation_sample(busy, rng: random.Random, where: bool = True, line: float = LINE_SHARE,
                    worked: bool = True) -> dict:
    """A dialogue of one or two relation questions (``worked``: ``relation_questions``) about a scene of ``busy``
    (record, layout) pairs with two or more objects, a pair in one row or column with chance ``line``, in cell words,
    in the stage-2 template with its system prompt."""
    while True:  # a scene whose objects are all alike in colour and shape has no uniquely named pair
        record, layout = rng.choice(busy)
        by_pair = relation_questions(record, rng, worked)
        if by_pair:
            break
    turns = []
    for _ in range(rng.randint(1, 2)):
        qa = rng.choice(by_pair.get("line" if rng.random() < line else "diag") or next(iter(by_pair.values())))
        if qa.question not in {q for q, _ in turns}:
            turns.append((qa.question, qa.answer))
    return scene_dialogue(f"relation_{record.image_id}", record, turns, scene_in_cell_words(layout, where))


def relations_chat_lm(cfg, lm, scenes, tokenizer, held_out=None, log=print) -> LlamaForCausalLM:
    """Worked relations: a fresh AdamW on ``relation_sample`` dialogues (``lm_relations_share`` of them) and phase-3
    dialogues with worked relation answers. It starts from the LM before it rounded to bf16, as every phase does."""
    lm.to(torch.bfloat16).to(torch.float32)
    torch.manual_seed(cfg.seed + 13)
    where = cfg.lm_cells_where
    kinds = FOCUS_KINDS + ("color",) * cfg.lm_cells_color
    busy = [(record, layout) for record, layout, _ in scenes if len(layout) >= 2]
    steps = cfg.lm_relations_steps
    report = phase_report("0b-relations", steps, lm, tokenizer, held_out, log,
                          in_words=functools.partial(in_cell_words, where=where))

    def draw(rng: random.Random) -> dict:
        if rng.random() < cfg.lm_relations_share:
            return relation_sample(busy, rng, where)
        record, layout = rng.choice(scenes)[:2]
        return cell_words_sample(record, layout, rng, where, kinds, worked=True)
    return fit_lm(lm, tokenizer, draw, random.Random(cfg.seed + 13), steps=steps, batch=cfg.lm_relations_batch,
                  lr=cfg.lm_relations_lr, warmup=0.05, max_length=cfg.max_length,
                  desc="stage 0b: chat LM, worked relations", report=report, share_prefix=cfg.lm_share_prefix)
