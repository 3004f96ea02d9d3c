"""The cell-word phase (stage 0b, phase 3) on busier scenes: does a scene with more objects break the colour shortcut?

In one-object scenes "name a colour present" is always right, and with 1–4 objects (the recipe's scenes) it is right
0.60 of the time; ``lookup_ladder.py`` solves the toy lookup with the question in words when training scenes hold
3–6 objects and stalls with 1–4. This runs phase 3 exactly as ``stage0.vocab.cell_words_chat_lm`` does (same mix,
colour drill included, shared prefix), from the LM before phase 3 (``FOCUS_DIR``: e.g. ``git archive 72917db
minillava/assets/tiny``; or an LM directory that has its cell words already, e.g. one drilled by
``colour_drill.py``), on training scenes of LO–HI objects (made by ``generate_split(max_objects=HI)``, the rest
dropped). Text-only QA on the recipe's held-out scenes (1–4 objects, 600 questions) every 250 steps.

    python benchmarks/experiments/cells_objects.py FOCUS_DIR 3-6 2000 OUT
"""
import dataclasses
import functools
import json
import os
import random
import sys
import time

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from minillava.data.shapes import generate_split
from minillava.stage0 import (FOCUS_KINDS, Stage0Config, fit_lm, in_cell_words, recipe_scenes,
                              text_qa_accuracy)
from minillava.stage0.vocab import add_cell_words, cell_words_sample, has_cell_words

torch.set_num_threads(2)
focus_dir, objects, steps, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
lo, hi = (int(v) for v in objects.split("-"))
cfg = dataclasses.replace(Stage0Config(), lm_cells_color=True, lm_share_prefix=True)
_, held_out = recipe_scenes(cfg)
train = [s for s in generate_split(cfg.scenes * 2, "train", seed=10_000 + cfg.seed, size_px=cfg.image_size,
                                   max_objects=hi) if lo <= len(s[1])][:cfg.scenes]
print(json.dumps({"scenes": len(train), "objects": objects,
                  "mean_objects": round(sum(len(s[1]) for s in train) / len(train), 2)}), flush=True)
lm_dir = f"{focus_dir}/lm" if os.path.isdir(f"{focus_dir}/lm") else focus_dir  # a recipe directory, or an LM's
tokenizer = AutoTokenizer.from_pretrained(lm_dir)
lm = LlamaForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
torch.manual_seed(cfg.seed + 3)
if not has_cell_words(tokenizer, where=True):  # else keep the trained rows
    add_cell_words(lm, tokenizer, where=True)
words = functools.partial(in_cell_words, where=True)
start = time.time()


def report(step: int, loss: float) -> None:
    if step % 100 == 0:
        print(json.dumps({"step": step, "s": round(time.time() - start), "loss": round(loss, 4)}), flush=True)
    if (step + 1) % 250 == 0:
        qa = text_qa_accuracy(lm, tokenizer, held_out, 600, words)
        print(json.dumps({"step": step + 1, "s": round(time.time() - start),
                          "text_qa": {k: v["accuracy"] for k, v in qa.items()}}), flush=True)


kinds = FOCUS_KINDS + ("color",)
fit_lm(lm, tokenizer, lambda rng: cell_words_sample(*rng.choice(train)[:2], rng, True, kinds),
       random.Random(cfg.seed + 3), steps=steps, batch=cfg.lm_cells_batch, lr=cfg.lm_cells_lr, warmup=0.05,
       max_length=cfg.max_length, desc="phase 3", report=report, share_prefix=True)
lm.save_pretrained(out)
tokenizer.save_pretrained(out)
