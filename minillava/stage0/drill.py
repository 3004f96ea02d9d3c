"""Stage 0b, the lookup drill: the chat LM's first lesson, before anything that rewards a shortcut.

"What color is the {shape}?" about a scene in cell words is a lookup: find the word whose shape matches, copy its
colour; "Where is the {color} {shape}?" the same with its cell; a relation is two such lookups and a comparison.
Trained in a mix with easier targets, a tiny LM settles instead on a shortcut for colour — name a colour that is
present — which is always right on one-object scenes and right ~0.6 of the time on the recipe's 1–4-object scenes, and once there it stays (``benchmarks/README.md``, "The toy's setting on the real chat LM"). So the drills
come first, from a fresh LM, on busy scenes (3–6 objects, where the shortcut pays least), one question per
dialogue and no system prompt (the shortest sequence that still has the task): colour, then position, then
relations, which stay at chance when drilled first and are learned once the position lookup is there. The cell-word
mix (``vocab``) then keeps a share of drill dialogues so the lookups are not unlearned.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import random

import torch
from transformers import LlamaForCausalLM

from ..conversation import get_template, prompt_ids
from ..data.shapes import COLORS, Shape, generate_split
from ..data.teachers import scene_questions
from .lm import fit_lm, scene_dialogue, text_qa_accuracy
from .vocab import add_cell_words, in_cell_words, scene_in_cell_words

NO_PROMPT = dataclasses.replace(get_template("vicuna_v1"), system="")  # the Vicuna template, empty system prompt


# the drills, in order, and the config field that gives each one's steps: a colour lookup by shape, a cell lookup
# by colour–shape pair, a size lookup by the same pair, then a relation (two lookups and a comparison of cells)
DRILLS = (("color", "lm_drill_steps"), ("position", "lm_drill_position_steps"), ("size", "lm_drill_size_steps"),
          ("relation", "lm_drill_relation_steps"))


def drill_scenes(cfg) -> list:
    """The drill's training scenes (record, layout): ``cfg.scenes`` train-bucket scenes of ``lm_drill_min_objects``
    to ``lm_drill_max_objects`` objects, drawn from 1–max-object scenes with their own seed; the sparser ones and
    those whose every shape comes twice (no colour question to ask) are dropped."""
    lo, hi = cfg.lm_drill_min_objects, cfg.lm_drill_max_objects
    scenes = generate_split(cfg.scenes * 3, "train", seed=20_000 + cfg.seed, size_px=cfg.image_size, max_objects=hi)
    return [(record, layout) for record, layout, _ in scenes
            if lo <= len(layout) and colour_questions(layout)][:cfg.scenes]


def colour_questions(layout: list[Shape]) -> list[tuple[str, str]]:
    """(question, answer) for every object whose shape is unique in the scene, in the teacher's words."""
    shapes = collections.Counter(o.shape for o in layout)
    return [(f"What color is the {o.shape}?", f"The {o.shape} is {o.color}.") for o in layout if shapes[o.shape] == 1]


def drill_sample(record, layout: list[Shape], rng: random.Random, kind: str = "color", where: bool = True) -> dict:
    """One question of ``kind`` about a scene in cell words, in the Vicuna template without its system prompt:
    colour by shape, or the teacher's question of that kind (``position``, ``size``, ``relation``; None if the scene
    has none)."""
    if kind == "color":
        turns = [rng.choice(colour_questions(layout))]
    else:
        turns = [(q.question, q.answer) for q in scene_questions(record, rng) if q.kind == kind][:1]
        if not turns:
            return None
    return {**scene_dialogue("drill", record, turns, scene_in_cell_words(layout, where)), "template": NO_PROMPT}


def draw_drill(scenes: list, kinds: list[str], weights: list[float], where: bool):
    """``draw(rng)`` for ``fit_lm``: a kind by ``weights``, then a scene that has a question of it."""
    def draw(rng: random.Random) -> dict:
        kind = rng.choices(kinds, weights)[0]
        while (sample := drill_sample(*rng.choice(scenes), rng, kind, where)) is None:
            pass
        return sample
    return draw


@torch.no_grad()
def colour_lookup_accuracy(lm, tokenizer, held_out, where: bool = True, max_questions: int = 300) -> float:
    """The colour drill's check: on held-out scenes of 2+ objects, is the asked object's colour the likeliest of the
    six after "The {shape} is" (teacher-forced, full template)? Naming a colour present scores ~0.45 here."""
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


def drilled_kinds(cfg) -> list[str]:
    """The kinds ``cfg`` drills, in order."""
    return [kind for kind, steps in DRILLS if getattr(cfg, steps)] if cfg.lm_drill_steps else []


def drill_chat_lm(cfg, lm, scenes: list, tokenizer, held_out=None, log=print) -> LlamaForCausalLM:
    """The drills, one after another, each a fresh AdamW on ``drill_sample`` dialogues about ``scenes``
    (``drill_scenes``): the new kind, and with ``lm_drill_replay`` of the dialogues the kinds drilled before it,
    which a drill of one kind alone unlearns (colour 1.00 → 0.20 after 800 steps of position questions). The LM
    gains its cell words here, each row started from the words it names (``add_cell_words``)."""
    where = cfg.lm_cells_where
    add_cell_words(lm, tokenizer, where)
    in_words = functools.partial(in_cell_words, where=where)
    kinds = drilled_kinds(cfg)
    for n, kind in enumerate(kinds):
        steps = getattr(cfg, dict(DRILLS)[kind])
        torch.manual_seed(cfg.seed + 4 + n)

        def report(step: int, loss: float, kind=kind, steps=steps) -> None:
            if step % 100 == 0 or step == steps - 1:
                row = {"stage": f"0b-drill-{kind}", "step": step, "loss": round(loss, 4)}
                if held_out is not None and (step % 250 == 0 or step == steps - 1):
                    row["colour_lookup"] = colour_lookup_accuracy(lm, tokenizer, held_out, where)
                    if n:
                        row["text_qa"] = {k: v["accuracy"] for k, v in
                                          text_qa_accuracy(lm, tokenizer, held_out, 300, in_words).items()}
                log(json.dumps(row))
        earlier = [cfg.lm_drill_replay / n] * n if n else []
        fit_lm(lm, tokenizer, draw_drill(scenes, kinds[:n + 1], earlier + [1 - sum(earlier)], where),
               random.Random(cfg.seed + 4 + n), steps=steps, batch=cfg.lm_drill_batch, lr=cfg.lm_drill_lr,
               warmup=0.05, max_length=cfg.max_length, desc=f"stage 0b: chat LM, {kind} drill", report=report,
               share_prefix=cfg.lm_share_prefix)
    return lm
