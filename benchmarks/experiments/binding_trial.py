"""A short chat-LM phase on the questions it gets wrong in text: objects that share their shape with another one.

In cell words the shipped chat LM finds "the red circle" perfectly unless the scene also holds a circle of another
colour (position 0.72 then; `position_binding.py`): it looks the object up by its shape word. This runs the
recipe's phase 5 (``stage0.binding``) on the shipped LM: dialogues of one or two of the teacher's position, size
and relation questions whose first named object shares its shape with another object of the scene, and (``MIX``)
a share of phase 3's dialogues. It prints the text split of `position_binding.py` and text QA per kind (1,200
held-out questions) before and after, and saves the LM (bf16, with the tokenizer) to OUT_DIR for a quickstart
(`lm_name=OUT_DIR`).
Usage: python benchmarks/experiments/binding_trial.py THREADS OUT_DIR STEPS [LR] [MIX]
"""
import dataclasses
import functools
import json
import sys
import time

import torch

from minillava.model.backbones import load_lm
from minillava.stage0 import Stage0Config, binding_chat_lm, in_cell_words, recipe_scenes, text_qa_accuracy
from position_binding import GROUPS, text_split

torch.set_num_threads(int(sys.argv[1]))
out, steps = sys.argv[2], int(sys.argv[3])
lr = float(sys.argv[4]) if len(sys.argv) > 4 else 5e-4
mix = float(sys.argv[5]) if len(sys.argv) > 5 else 0.3
cfg = dataclasses.replace(Stage0Config(), lm_binding_steps=steps, lm_binding_lr=lr, lm_binding_mix=mix)
scenes, held_out = recipe_scenes(cfg)
lm, tokenizer = load_lm("tiny")
lm.to(torch.float32)


def measure(tag: str) -> None:
    right, total = text_split(lm, tokenizer, held_out, cfg.lm_cells_where)
    qa = text_qa_accuracy(lm, tokenizer, held_out, 1200, functools.partial(in_cell_words, where=cfg.lm_cells_where))
    print(json.dumps({"tag": tag, "position_by_group": {g: f"{right[g]}/{total[g]}" for g in GROUPS},
                      "text_qa": {k: v["accuracy"] for k, v in qa.items()}}), flush=True)


measure("shipped")
t = time.time()
binding_chat_lm(cfg, lm, scenes, tokenizer)  # the recipe's phase 5 (stage0.binding), without its held-out checks
print(f"{steps} steps in {time.time() - t:.0f} s", flush=True)
measure(f"binding {steps} steps lr {lr} mix {mix}")
lm.to(torch.bfloat16).save_pretrained(out)
tokenizer.save_pretrained(out)
