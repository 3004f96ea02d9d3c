"""Stage 2 with perfect visual tokens: the quickstart's own stage-2 data, the image replaced by its cell words.

Stage 1's promise (§4.2) is "a compatible visual tokenizer for the frozen LLM". Here that tokenizer is perfect: each
scene is written as its nine cell words (`stage0.vocab.scene_in_cell_words`, cells named), the words the shipped chat
LM learned in stage 0 to answer from. The LM then trains on the quickstart's stage-2 instructions (the rule teacher's
`instruct_train.json`, drawn at random with replacement) for the quickstart's steps, batch and lr, text only
(`stage0.lm.fit_lm`: AdamW betas (0.9, 0.98) and grad clip 1.0; stage 2's trainer uses (0.9, 0.999), and it walks
its data in length-grouped epochs). Before and after, it answers the quickstart's 1,800 held-out questions
(`eval.accuracy.heldout_questions` on the test split) given the scene in cell words: accuracy per kind, and the
"What is at" answers split into occupied and empty cells.

What it separates: if the LM answers "What is at" by reading here and not in the image model, what stage 2 misses is
the image's side (tower and W); if it falls into "nothing" here too, stage 2's data and the LM are enough to make the
habit, whatever the tokens.
Usage: python benchmarks/experiments/cell_word_stage2.py THREADS RUN [key=value ...]
  (RUN: a directory; its data/ is made as the quickstart makes it, with the same overrides, e.g. teacher_occupied=0.5)
"""
import copy
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from minillava.config import load_config
from minillava.conversation import IMAGE_TOKEN, get_template, prompt_ids
from minillava.data.dataset import left_pad
from minillava.data.llava_json import read_llava_json
from minillava.data.records import load_split
from minillava.data.shapes import scene_objects
from minillava.data.teachers import answer_is_correct, instructions_file, object_at, stated_answer, teacher_options
from minillava.eval.accuracy import answer_habits, heldout_questions
from minillava.model.backbones import load_lm
from minillava.quickstart import prepare_data
from minillava.stage0.lm import fit_lm
from minillava.stage0.vocab import scene_in_cell_words

torch.set_num_threads(int(sys.argv[1]))
run = Path(sys.argv[2]).resolve()
cfg = load_config("tiny", [f"data_dir={run / 'data'}", *sys.argv[3:]])
data = prepare_data(cfg)
lm, tokenizer = load_lm(cfg.lm_name)
lm.to(torch.float32)
template = get_template("vicuna_v1")


def cells(record) -> str:
    """The scene as nine cell words (cells named), from its COCO record."""
    return scene_in_cell_words(scene_objects(record), where=True)


train = {r.file_name: cells(r) for r in load_split(data, cfg.data_split)}
samples = read_llava_json(instructions_file(data, cfg.data_split, **teacher_options(cfg)))
rows = heldout_questions(load_split(data, "test"))[:int(os.environ.get("ROWS", 10**9))]  # ROWS: a smoke run


def draw(rng: random.Random) -> dict:
    sample = copy.deepcopy(rng.choice(samples))
    first = sample["conversations"][0]
    first["value"] = first["value"].replace(IMAGE_TOKEN, train[sample["image"]])
    return sample


@torch.no_grad()
def measure(tag: str) -> None:
    lm.eval()
    answers, what_at = [], Counter()
    for i in range(0, len(rows), 64):
        chunk = rows[i:i + 64]
        ids, mask = left_pad([prompt_ids(f"{cells(r)}\n{qa.question}", tokenizer, template, image_tokens=1)
                              for r, qa in chunk], tokenizer.pad_token_id)
        out = lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=64, do_sample=False,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        for (record, qa), seq in zip(chunk, out[:, ids.shape[1]:]):
            text = tokenizer.decode(seq, skip_special_tokens=True)
            ok = answer_is_correct(qa, text)
            answers.append({"kind": qa.kind, "question": qa.question, "key": qa.key, "answer": text,
                            "stated": stated_answer(qa.kind, text), "correct": ok})
            if qa.question.startswith("What is at the "):
                cell = "occupied" if object_at(record, qa.question[len("What is at the "):-1]) else "empty"
                what_at[f"{cell} n"] += 1
                what_at[f"{cell} right"] += ok
    kinds = sorted({a["kind"] for a in answers})
    accuracy = {k: round(sum(a["correct"] for a in answers if a["kind"] == k) / sum(a["kind"] == k for a in answers), 3)
                for k in kinds}
    accuracy["all"] = round(sum(a["correct"] for a in answers) / len(answers), 3)
    habits = [form for form, row in answer_habits(answers).items() if row["habit"]]
    print(json.dumps({"tag": tag, "accuracy": accuracy, "what_is_at": dict(what_at), "habits": habits}), flush=True)
    lm.train()


measure("shipped chat LM, scene in cell words")
t = time.time()
fit_lm(lm, tokenizer, draw, random.Random(cfg.seed), steps=cfg.stage2_steps, batch=cfg.stage2_batch,
       lr=cfg.stage2_lr, warmup=cfg.warmup_ratio, max_length=cfg.max_length, desc="stage 2 in cell words",
       share_prefix=True, report=lambda step, loss: print(json.dumps({"step": step, "loss": round(loss, 4)}), flush=True)
       if step % 100 == 0 or step == cfg.stage2_steps - 1 else None)
print(f"{cfg.stage2_steps} steps in {time.time() - t:.0f} s", flush=True)
measure(f"after stage 2 in cell words ({cfg.stage2_steps} x {cfg.stage2_batch}, lr {cfg.stage2_lr})")
