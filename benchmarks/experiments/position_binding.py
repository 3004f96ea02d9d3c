"""Which "Where is the {color} {shape}?" questions go wrong: split by what the asked object shares with the others.

Each position question is put in one of four groups by the other objects of its scene: none shares the asked
colour or shape; one shares its shape (a blue circle beside the asked red circle: only the colour tells them
apart); one shares its colour; both. Image: a quickstart's ``answers.jsonl`` (held-out test scenes). Text: the
shipped chat LM reading the recipe's held-out scenes as cell words (``stage0.text_qa_accuracy``), asked up to three
position questions per scene. Size questions name the object the same way and are split too (image only).
Usage: python benchmarks/experiments/position_binding.py RUN_DIR [RUN_DIR ...]
"""
import functools
import json
import random
import re
import sys
from collections import Counter

import torch

import minillava.stage0.lm as stage0_lm
from minillava.data.records import load_split
from minillava.model.backbones import load_lm
from minillava.stage0 import Stage0Config, in_cell_words, recipe_scenes, text_qa_accuracy

GROUPS = ("none", "same shape", "same colour", "both")


def group(question: str, objects) -> str:
    color, shape = re.match(r"(?:Where is|Is) the (\w+) (\w+)", question).groups()
    same_color = any(o.color == color and o.category != shape for o in objects)
    same_shape = any(o.category == shape and o.color != color for o in objects)
    return "both" if same_color and same_shape else "same colour" if same_color else \
        "same shape" if same_shape else "none"


def show(label: str, right: Counter, total: Counter) -> None:
    print(f"{label:48s}" + "  ".join(f"{g}: {right[g]}/{total[g]} = {right[g] / max(total[g], 1):.2f}" for g in GROUPS))


def text_split(lm, tokenizer, held_out, where: bool) -> tuple[Counter, Counter]:
    """Right and asked position questions per group, the LM reading ``held_out`` scenes as cell words."""
    asked = []  # (record, qa) in the order text_qa_accuracy asks them: the scenes in order, up to three each

    def position_questions(record, rng, *args, **kwargs):
        qas = [qa for qa in original(record, rng, *args, **kwargs) if qa.kind == "position"][:3]
        asked.extend((record, qa) for qa in qas)
        return qas

    original, stage0_lm.scene_questions = stage0_lm.scene_questions, position_questions
    answers = []
    try:
        text_qa_accuracy(lm, tokenizer, held_out, 10_000, functools.partial(in_cell_words, where=where),
                         answers=answers)
    finally:
        stage0_lm.scene_questions = original
    right, total = Counter(), Counter()
    for (record, qa), a in zip(asked, answers, strict=True):
        assert a["question"] == qa.question
        g = group(qa.question, record.objects)
        total[g] += 1
        right[g] += a["correct"]
    return right, total


if __name__ == "__main__":
    for run in sys.argv[1:]:
        scenes = {r.file_name: r for r in load_split(f"{run}/data", "test")}
        for kind in ("position", "size"):
            right, total = Counter(), Counter()
            for a in (json.loads(line) for line in open(f"{run}/answers.jsonl")):
                if a["kind"] == kind:
                    g = group(a["question"], scenes[a["image"]].objects)
                    total[g] += 1
                    right[g] += a["correct"]
            show(f"image, {kind}, {run}", right, total)
    torch.set_num_threads(2)
    cfg = Stage0Config()
    _, held_out = recipe_scenes(cfg)
    lm, tokenizer = load_lm("tiny")
    show("text (cell words), position, shipped LM", *text_split(lm, tokenizer, held_out, cfg.lm_cells_where))
