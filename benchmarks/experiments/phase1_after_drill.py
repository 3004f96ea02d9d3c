"""Does a drilled colour lookup survive phase 1? Phase-1 dialogues (``stage0.lm.text_sample``: the scene as a
sentence, all four kinds of §3 data; the recipe's scenes, batch, learning rate) from an LM drilled by
``colour_drill.py``. Every 200 steps: teacher-forced colour choice on 300 held-out multi-object questions with the
scene in cell words (what the drill taught), and text-only QA with the scene as a sentence (what phase 1 teaches).

    python benchmarks/experiments/phase1_after_drill.py LM_DIR STEPS
"""
import json
import random
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lm_lookup import colour_accuracy, colour_questions  # noqa: E402
from minillava.conversation import get_template  # noqa: E402
from minillava.stage0 import Stage0Config, fit_lm, recipe_scenes, text_qa_accuracy  # noqa: E402
from minillava.stage0.lm import text_sample  # noqa: E402

torch.set_num_threads(2)
lm_dir, steps = sys.argv[1], int(sys.argv[2])
cfg = Stage0Config()
scenes, held_out = recipe_scenes(cfg)
tokenizer = AutoTokenizer.from_pretrained(lm_dir)
lm = LlamaForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
test = colour_questions(held_out, 300)
template = get_template("vicuna_v1")


start = time.time()


def report(step: int, loss: float) -> None:
    if step == 0 or (step + 1) % 200 == 0:
        qa = text_qa_accuracy(lm, tokenizer, held_out, 600)
        print(json.dumps({"step": step + 1, "s": round(time.time() - start), "loss": round(loss, 4),
                          "cells_multi_colour": colour_accuracy(lm, tokenizer, test, template),
                          "sentence_qa": {k: v["accuracy"] for k, v in qa.items()}}), flush=True)


torch.manual_seed(cfg.seed)
fit_lm(lm, tokenizer, lambda rng: text_sample(rng.choice(scenes)[0], rng), random.Random(cfg.seed + 1),
       steps=steps, batch=cfg.lm_batch, lr=cfg.lm_lr, warmup=0.03, max_length=cfg.max_length, desc="phase 1",
       report=report, share_prefix=True)
