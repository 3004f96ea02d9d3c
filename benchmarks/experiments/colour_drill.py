"""The toy's solved setting on the real chat LM: one dense colour drill, busy scenes, optionally without the prompt.

``lookup_ladder.py`` leaves its plateau soonest when every answer is a colour lookup (batch 64), the training scenes
hold 3–6 objects, and the 70-token prefix comes only after the lookup is learned. Here the same on the real chat LM
(from ``LM_DIR``, cell words added if it has none; ``fresh``: an untrained LM of the shipped shape and vocabulary,
its cell-word rows set as ``add_cell_words`` sets them): each dialogue asks "What color is the {shape}?" about
every object of a scene in cell words whose shape is unique there (the teacher's questions and answers), the
training scenes made by ``generate_split(max_objects=6)`` and kept from OBJECTS' lower end; with NO_PROMPT=1 the
Vicuna template's system prompt is empty; TURNS=1 keeps one question per dialogue (with all of them, the last answer
can be had by elimination: the one colour not yet named). Every 100 steps: teacher-forced accuracy on 300 held-out
multi-object colour questions (the recipe's val scenes, 1–4 objects), with the full template and with the empty
system prompt. KIND=relation (or position): one question of that teacher kind per dialogue instead (KIND=
relation_steps: the relation answer preceded by both objects' cells, ``with_cells``), scored by
greedy answers on 300 held-out questions of the kind (exact match, as ``text_qa_accuracy`` scores).

    TURNS=1 OBJECTS=3-6 NO_PROMPT=1 python benchmarks/experiments/colour_drill.py LM_DIR STEPS BATCH LR [OUT]
"""
import dataclasses
import json
import os
import random
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lm_lookup import colour_accuracy, colour_questions  # noqa: E402
from minillava.conversation import get_template, prompt_ids  # noqa: E402
from minillava.data.llava_json import make_sample  # noqa: E402
from minillava.data.grid import POSITIONS  # noqa: E402
from minillava.data.shapes import generate_split  # noqa: E402
from minillava.data.teachers import answer_is_correct, scene_questions  # noqa: E402
from minillava.model.backbones import backbone_path, tiny_lm_config  # noqa: E402
from minillava.stage0 import Stage0Config, fit_lm, recipe_scenes, scene_in_cell_words  # noqa: E402
from minillava.stage0.drill import colour_questions as drill_colour_questions  # noqa: E402
from minillava.stage0.vocab import add_cell_words, has_cell_words  # noqa: E402

torch.set_num_threads(int(os.environ.get("THREADS", 2)))
lm_dir, steps, batch, lr = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
out = sys.argv[5] if len(sys.argv) > 5 else None
lo, hi = (int(v) for v in os.environ.get("OBJECTS", "3-6").split("-"))
full = get_template("vicuna_v1")
empty = dataclasses.replace(full, system="")
train_template = empty if os.environ.get("NO_PROMPT") == "1" else full
cfg = Stage0Config()
_, held_out = recipe_scenes(cfg)
train = [s for s in generate_split(cfg.scenes * 2, "train", seed=10_000 + cfg.seed, size_px=cfg.image_size,
                                   max_objects=hi) if lo <= len(s[1])][:cfg.scenes]
torch.manual_seed(0)
if lm_dir == "fresh":  # an untrained LM of the shipped shape and vocabulary, cell rows from their words' rows
    tokenizer = AutoTokenizer.from_pretrained(backbone_path("tiny", "lm"))
    lm = LlamaForCausalLM(tiny_lm_config(len(tokenizer), tokenizer))
    add_cell_words(lm, tokenizer, where=True)  # the words are there already: this only sets their rows
else:
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    lm = LlamaForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    if not has_cell_words(tokenizer, where=True):
        add_cell_words(lm, tokenizer, where=True)
KIND = os.environ.get("KIND", "color")
STEPS_FIRST = KIND == "relation_steps"  # relation, its answer naming both cells first
KIND = "relation" if STEPS_FIRST else KIND
if KIND == "color":
    test = colour_questions(held_out, int(os.environ.get("TEST", 300)))
else:  # (layout, QA): the teacher's question of that kind about each held-out scene that has one
    test = [(layout, q) for record, layout, _ in held_out
            for q in scene_questions(record, random.Random(record.image_id)) if q.kind == KIND]
    test = test[:int(os.environ.get("TEST", 300))]


def with_cells(qa, layout) -> str:
    """KIND=relation_steps: the teacher's relation answer after both objects' cells, as a worked answer
    ("The red circle is at the top left and the blue square is at the center, so the red circle is above and to
    the left of the blue square.")."""
    first, second = qa.question[len("Where is the "):-1].split(" relative to the ")
    cell = {f"{o.color} {o.shape}": POSITIONS[o.cell] for o in layout}
    return (f"The {first} is at the {cell[first]} and the {second} is at the {cell[second]}, so "
            f"{qa.answer[0].lower()}{qa.answer[1:]}")


def drill(rng: random.Random) -> dict:
    """KIND=color: a scene's unique-shape colour questions, shuffled, in one dialogue (TURNS of them); another
    teacher kind (``relation``, ``position``): one question of that kind from ``scene_questions``."""
    record, layout, _ = rng.choice(train)
    if KIND == "color":
        turns = drill_colour_questions(layout)
        rng.shuffle(turns)
        turns = turns[:int(os.environ.get("TURNS", 9))]  # TURNS=1: one question per dialogue, as the toy asks
    else:
        turns = [(q.question, with_cells(q, layout) if STEPS_FIRST else q.answer)
                 for q in scene_questions(record, rng) if q.kind == KIND][:1]
    sample = make_sample("drill", "x.png", turns or [("What color is the image?", "It has no single colour.")])
    sample["conversations"][0]["value"] = sample["conversations"][0]["value"].replace(
        "<image>", scene_in_cell_words(layout, True))
    return {**sample, "template": train_template}


@torch.no_grad()
def accuracy(template) -> float:
    """KIND=color: teacher-forced colour choice on multi-object scenes; another kind: greedy answers, exact match."""
    if KIND == "color":
        return colour_accuracy(lm, tokenizer, test, template)
    lm.eval()
    right = 0
    for layout, asked in test:
        ids = prompt_ids(f"{scene_in_cell_words(layout, True)}\n{asked.question}", tokenizer, template, image_tokens=1)
        out = lm.generate(input_ids=ids[None], max_new_tokens=48 if STEPS_FIRST else 24, do_sample=False,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        right += answer_is_correct(asked, tokenizer.decode(out[0, len(ids):], skip_special_tokens=True))
    lm.train()
    return round(right / len(test), 3)


start = time.time()
label = "multi" if KIND == "color" else KIND  # colour is scored on multi-object scenes only


def report(step: int, loss: float) -> None:
    if (step + 1) % int(os.environ.get("EVAL_EVERY", 100)) == 0 or step == 0:
        print(json.dumps({"step": step + 1, "s": round(time.time() - start), "loss": round(loss, 4),
                          f"{label}_full": accuracy(full), f"{label}_no_prompt": accuracy(empty)}), flush=True)


print(json.dumps({"lm": lm_dir, "kind": KIND, "cells_first": STEPS_FIRST, "objects": f"{lo}-{hi}",
                  "no_prompt": train_template is empty, "batch": batch, "turns": int(os.environ.get("TURNS", 9)),
                  "lr": lr, "test": len(test)}), flush=True)
fit_lm(lm, tokenizer, drill, random.Random(5), steps=steps, batch=batch, lr=lr, warmup=0.05, max_length=256,
       desc="drill", report=report, share_prefix=True)
if out:
    lm.save_pretrained(out)
    tokenizer.save_pretrained(out)
