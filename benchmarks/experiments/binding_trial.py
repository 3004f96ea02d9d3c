"""A short chat-LM phase on the questions it gets wrong in text: objects that share their shape with another one.

In cell words the shipped chat LM finds "the red circle" perfectly unless the scene also holds a circle of another
colour (position 0.72 then; `position_binding.py`): it looks the object up by its shape word. This phase continues
the shipped LM (fresh AdamW, warmup + cosine, the stage-2 template with its system prompt) on dialogues of one or
two of the teacher's position, size and relation questions whose first named object shares its shape with another
object of the scene, and (``MIX``) a share of phase 3's dialogues so the rest is not forgotten. It prints the text
split of `position_binding.py` and text QA per kind (1,200 held-out questions) before and after, and saves the LM
(bf16, with the tokenizer) to OUT_DIR for a quickstart (`lm_name=OUT_DIR`).
Usage: python benchmarks/experiments/binding_trial.py THREADS OUT_DIR STEPS [LR] [MIX]
"""
import functools
import json
import random
import re
import sys
import time

import torch

from minillava.conversation import IMAGE_TOKEN
from minillava.data.llava_json import make_sample
from minillava.data.teachers import scene_questions
from minillava.model.backbones import load_lm
from minillava.stage0 import Stage0Config, in_cell_words, recipe_scenes, text_qa_accuracy
from minillava.stage0.lm import FOCUS_KINDS, fit_lm, phase_report
from minillava.stage0.vocab import cell_words_sample, scene_in_cell_words
from position_binding import GROUPS, text_split

torch.set_num_threads(int(sys.argv[1]))
out, steps = sys.argv[2], int(sys.argv[3])
lr = float(sys.argv[4]) if len(sys.argv) > 4 else 5e-4
mix = float(sys.argv[5]) if len(sys.argv) > 5 else 0.3
cfg = Stage0Config()
scenes, held_out = recipe_scenes(cfg)
lm, tokenizer = load_lm("tiny")
lm.to(torch.float32)
where = cfg.lm_cells_where


def shares_shape(question: str, objects) -> bool:
    m = re.match(r"(?:Where is|Is) the (\w+) (\w+)", question)
    return bool(m) and any(o.category == m.group(2) and o.color != m.group(1) for o in objects)


def binding_questions(record, rng):
    return [qa for qa in scene_questions(record, rng)
            if qa.kind in ("position", "size", "relation") and shares_shape(qa.question, record.objects)]


busy = [(r, layout) for r, layout, _ in scenes if binding_questions(r, random.Random(0))]


def draw(rng: random.Random) -> dict:
    if rng.random() < mix:
        record, layout = rng.choice(scenes)[:2]
        return cell_words_sample(record, layout, rng, where, FOCUS_KINDS + ("color",) * cfg.lm_cells_color)
    record, layout = rng.choice(busy)
    qas = binding_questions(record, rng)
    turns = [(qa.question, qa.answer) for qa in rng.sample(qas, min(len(qas), rng.randint(1, 2)))]
    sample = make_sample(f"binding_{record.image_id}", record.file_name, turns)
    sample["conversations"][0]["value"] = sample["conversations"][0]["value"].replace(
        IMAGE_TOKEN, scene_in_cell_words(layout, where))
    return sample


def measure(tag: str) -> None:
    right, total = text_split(lm, tokenizer, held_out, where)
    qa = text_qa_accuracy(lm, tokenizer, held_out, 1200, functools.partial(in_cell_words, where=where))
    print(json.dumps({"tag": tag, "position_by_group": {g: f"{right[g]}/{total[g]}" for g in GROUPS},
                      "text_qa": {k: v["accuracy"] for k, v in qa.items()}}), flush=True)


print(f"{len(busy)} of {len(scenes)} training scenes have such a question", flush=True)
measure("shipped")
t = time.time()
torch.manual_seed(cfg.seed + 11)
fit_lm(lm, tokenizer, draw, random.Random(cfg.seed + 11), steps=steps, batch=32, lr=lr, warmup=0.05,
       max_length=cfg.max_length, desc="binding", report=phase_report("binding", steps, lm, tokenizer, log=print),
       share_prefix=cfg.lm_share_prefix)
print(f"{steps} steps in {time.time() - t:.0f} s", flush=True)
measure(f"binding {steps} steps lr {lr} mix {mix}")
lm.to(torch.bfloat16).save_pretrained(out)
tokenizer.save_pretrained(out)
