"""Stage 0b, the review, after binding (and before worked relations, ``relations``): the question forms the chat LM
reads weakest, asked again in the chat template.

After phase 3 and binding the chat LM reads colour, count and position from nine cell words but misses some forms
more often (``recipe.json``, ``text_qa_cells``). One is a habit the teacher's question mix teaches: "What is at the
{position}?" is asked of one cell drawn at random, so on 1–4-object scenes about three in four are empty and
"nothing" is usually right; the recipe-12 LM names the object in an occupied cell 0.60 of the time. The review asks
that form of an occupied cell as often as of an empty one, and relations and size more often than the teacher
does, one or two questions a dialogue, with a share of phase 3's own dialogues so nothing else is forgotten. Its
lr is lower than phase 3's: it adjusts a trained LM, it does not start one.

Measured (``benchmarks/README.md``, "Phase 4, the review" and "The review after binding"): run between phase 3 and
binding (recipe 11) it lifted text QA but not clearly the quickstart. Run after binding (recipe 13) text QA in cell
words reaches 0.95 or more for every kind but relations (0.89; occupied cell named 0.60 → 0.85), and with stage 1's
fit onto the cell words the quickstart's relations rise by 0.06–0.08 on two seeds. Relations in text are what the
worked-relations phase after it lifts."""

from __future__ import annotations

import functools
import random

import torch
from transformers import LlamaForCausalLM

from ..data.grid import POSITIONS
from ..data.teachers import QA, object_at, scene_questions, what_is_at
from .lm import FOCUS_KINDS, fit_lm, phase_report, scene_dialogue
from .vocab import add_cell_words, cell_words_sample, has_cell_words, in_cell_words, scene_in_cell_words

# the forms the review asks, and how often: "what_at" is "What is at the {position}?" with an occupied cell half
# the time; the others are the teacher's questions of that kind
REVIEW_FORMS = {"what_at": 3, "relation": 3, "size": 2, "shape": 1, "count": 1, "color": 1, "position": 1,
                "exists": 1}


def what_at_cell(record, rng: random.Random) -> str:
    """The cell "What is at" asks of: an occupied one half the time (when the scene has both kinds)."""
    occupied = [p for p in POSITIONS if object_at(record, p) is not None]
    empty = [p for p in POSITIONS if p not in occupied]
    return rng.choice(occupied if occupied and (rng.random() < 0.5 or not empty) else empty)


def review_question(record, rng: random.Random, form: str) -> QA | None:
    """One question of ``form`` about ``record`` (None if the scene has none)."""
    if form == "what_at":
        return what_is_at(record, what_at_cell(record, rng))
    asked = [qa for qa in scene_questions(record, rng) if qa.kind == form and not qa.question.startswith("What is at")]
    return rng.choice(asked) if asked else None


def review_sample(record, layout, rng: random.Random, where: bool = True) -> dict:
    """A dialogue of one or two review questions (forms drawn by ``REVIEW_FORMS``) about the scene in cell words,
    in the stage-2 template with its system prompt."""
    forms, weights = zip(*REVIEW_FORMS.items())
    turns = []
    for form in rng.choices(forms, weights, k=rng.randint(1, 2)):
        qa = review_question(record, rng, form)
        if qa is not None and qa.question not in {q for q, _ in turns}:
            turns.append((qa.question, qa.answer))
    if not turns:  # a scene with none of the drawn forms (a one-object scene has no relation): ask what is at a cell
        qa = review_question(record, rng, "what_at")
        turns.append((qa.question, qa.answer))
    return scene_dialogue(f"review_{record.image_id}", record, turns, scene_in_cell_words(layout, where))


def review_chat_lm(cfg, lm, scenes, tokenizer, held_out=None, log=print) -> LlamaForCausalLM:
    """The review: a fresh AdamW on ``review_sample`` dialogues, ``1 - lm_review_mix`` of them, and phase-3 dialogues.

    It starts from the LM before it rounded to bf16 — the weights a recipe without it ships — so adding it to a saved
    recipe (``add_lm_phase``) and a run from scratch take the same steps."""
    lm.to(torch.bfloat16).to(torch.float32)
    torch.manual_seed(cfg.seed + 9)
    where = cfg.lm_cells_where
    in_words = functools.partial(in_cell_words, where=where)
    if not has_cell_words(tokenizer, where):  # a recipe without drills or phase 3: the review brings them
        add_cell_words(lm, tokenizer, where)
    steps = cfg.lm_review_steps
    kinds = FOCUS_KINDS + ("color",) * cfg.lm_cells_color
    report = phase_report("0b-review", steps, lm, tokenizer, held_out, log, in_words=in_words)

    def draw(rng: random.Random) -> dict:
        record, layout = rng.choice(scenes)[:2]
        if rng.random() < cfg.lm_review_mix:
            return cell_words_sample(record, layout, rng, where, kinds)
        return review_sample(record, layout, rng, where)
    return fit_lm(lm, tokenizer, draw, random.Random(cfg.seed + 9), steps=steps, batch=cfg.lm_review_batch,
                  lr=cfg.lm_review_lr, warmup=0.05, max_length=cfg.max_length, desc="stage 0b: chat LM, review",
                  report=report, share_prefix=cfg.lm_share_prefix)
