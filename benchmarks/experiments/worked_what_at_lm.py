"""Teach the chat LM, in text, the last step of a worked "What is at" answer: copy what its own list put at a cell.

`worked_what_at_forced.py` shows that after stage 2 the conclusion of a worked answer ignores the list before it. This
continues the shipped chat LM (stage 0, text only, cell words, the stage-2 template) on dialogues that ask "What is
at the {position}?" — of an occupied cell half the time — answered the worked way (``teachers.what_is_at(...,
worked=True)``), with ``MIX`` of phase 3's dialogues so nothing else is forgotten, as the binding phase does. Before
and after, on the recipe's held-out scenes in cell words: text QA per kind (600 questions); the worked answer
generated for one occupied and one empty cell of 200 scenes (``SCENES``) (list right, answer right); and the last step
teacher-forced with the right list and with the list changed (the asked object left out; an object listed at an
empty cell): p(" a"/" an") against p(" nothing"). Saves the LM (bf16, with the tokenizer) to OUT_DIR for a
quickstart (`lm_name=OUT_DIR teacher_worked_what_at=true`).
``COPY`` (default 0): that share of the dialogues gives the list and not the scene — "At the top center there is a
large red circle and .... What is at the top left?" answered "At the top left there is nothing." — so only the list
can answer, and the step that copies from it is the one to learn.
Usage: python benchmarks/experiments/worked_what_at_lm.py THREADS OUT_DIR STEPS [LR] [MIX] [SCENES] [COPY]
"""
import functools
import json
import random
import statistics
import sys
import time

import torch

from minillava.conversation import IMAGE_TOKEN, get_template, prompt_ids
from minillava.data.grid import POSITIONS
from minillava.data.llava_json import make_sample
from minillava.data.teachers import answer_is_correct, describe, object_at, position, what_is_at
from minillava.data.words import a, join_words
from minillava.model.backbones import load_lm
from minillava.stage0 import Stage0Config, in_cell_words, recipe_scenes, text_qa_accuracy
from minillava.stage0.lm import FOCUS_KINDS, fit_lm
from minillava.stage0.review import what_at_cell
from minillava.stage0.vocab import cell_words_sample, scene_in_cell_words

torch.set_num_threads(int(sys.argv[1]))
out, steps = sys.argv[2], int(sys.argv[3])
lr = float(sys.argv[4]) if len(sys.argv) > 4 else 5e-4
mix = float(sys.argv[5]) if len(sys.argv) > 5 else 0.3
checked = int(sys.argv[6]) if len(sys.argv) > 6 else 200  # held-out scenes for the generated and forced checks
copy = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0
cfg = Stage0Config()
where = cfg.lm_cells_where
scenes, held_out = recipe_scenes(cfg)
lm, tokenizer = load_lm("tiny")
lm.to(torch.float32)
# text_qa_accuracy lets an answer run to 24 tokens, and a worked one needs up to 57: give every answer 64
generate = lm.generate
lm.generate = lambda **kwargs: generate(**{**kwargs, "max_new_tokens": 64})
template = get_template("vicuna_v1")
ids_of = {w: tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in ("a", "an", "nothing")}


def draw(rng: random.Random) -> dict:
    record, layout = rng.choice(scenes)[:2]
    roll = rng.random()
    if roll < mix:
        return cell_words_sample(record, layout, rng, where, FOCUS_KINDS + ("color",) * cfg.lm_cells_color)
    qa = what_is_at(record, what_at_cell(record, rng), worked=True)
    if roll < mix + copy:  # the list, not the scene: only the list can answer
        listed, answer = qa.answer.rsplit(", so ", 1)
        sample = make_sample(f"copy_{record.image_id}", record.file_name,
                             [(f"{listed}. {qa.question}", f"A{answer[1:]}")])
        sample["conversations"][0]["value"] = sample["conversations"][0]["value"].replace(f"{IMAGE_TOKEN}\n", "")
        return sample
    sample = make_sample(f"workedat_{record.image_id}", record.file_name, [(qa.question, qa.answer)])
    sample["conversations"][0]["value"] = sample["conversations"][0]["value"].replace(
        IMAGE_TOKEN, scene_in_cell_words(layout, where))
    return sample


def prompt(layout, question: str, forced: str = "") -> torch.Tensor:
    ids = prompt_ids(f"{scene_in_cell_words(layout, where)}\n{question}", tokenizer, template, image_tokens=1)
    return torch.cat([ids, torch.tensor(tokenizer(forced, add_special_tokens=False)["input_ids"], dtype=ids.dtype)]) \
        if forced else ids


def worked_prefix(items, pos: str) -> str:
    items = sorted(items, key=lambda item: POSITIONS.index(item[0]))
    return f"A{join_words([f'at the {c} there is {w}' for c, w in items])[1:]}, so at the {pos} there is"


@torch.no_grad()
def measure(tag: str) -> None:
    lm.eval()
    qa_text = text_qa_accuracy(lm, tokenizer, held_out, 3 * checked, functools.partial(in_cell_words, where=where))
    generated = {"occupied": [0, 0, 0], "empty": [0, 0, 0]}  # list right, answer right, n
    forced = {k: [] for k in ("occupied", "occupied, left out", "empty", "empty, listed there")}
    for record, layout, _ in held_out[:checked]:
        items = [(position(o, record), a(describe(o))) for o in record.objects]
        cells = [p for p in POSITIONS if object_at(record, p)], [p for p in POSITIONS if not object_at(record, p)]
        for kind, choices in zip(("occupied", "empty"), cells):
            if not choices:
                continue
            qa = what_is_at(record, random.Random(record.image_id).choice(choices), worked=True)
            ids = prompt(layout, qa.question)
            seq = lm.generate(input_ids=ids[None], max_new_tokens=64, do_sample=False,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            text = tokenizer.decode(seq[0, len(ids):], skip_special_tokens=True)
            steps_text, right_steps = text.rsplit(", so ", 1)[0], qa.answer.rsplit(", so ", 1)[0]
            generated[kind][0] += steps_text.strip() == right_steps
            generated[kind][1] += answer_is_correct(qa, text)
            generated[kind][2] += 1
        for pos in POSITIONS:
            obj = object_at(record, pos)
            variants = [("occupied", items), ("occupied, left out", [i for i in items if i[0] != pos])] if obj else \
                [("empty", items), ("empty, listed there", items + [(pos, items[0][1])])]
            for key, listed in variants:
                if listed:
                    p = lm(input_ids=prompt(layout, f"What is at the {pos}?", worked_prefix(listed, pos))[None]) \
                        .logits[0, -1].softmax(-1)
                    some = p[ids_of["a"]] + p[ids_of["an"]]
                    forced[key].append((some / (some + p[ids_of["nothing"]])).item())
    print(json.dumps({"tag": tag, "text_qa": {k: v["accuracy"] for k, v in qa_text.items()},
                      "worked_generated": {k: f"list {v[0]}/{v[2]}, answer {v[1]}/{v[2]}"
                                           for k, v in generated.items()},
                      "forced_p_object": {k: round(statistics.mean(v), 3) for k, v in forced.items()}}), flush=True)
    lm.train()


measure("shipped")
t = time.time()
fit_lm(lm, tokenizer, draw, random.Random(cfg.seed + 13), steps=steps, batch=32, lr=lr, warmup=0.05,
       max_length=cfg.max_length, desc="worked what-at", share_prefix=cfg.lm_share_prefix,
       report=lambda step, loss: print(json.dumps({"step": step, "loss": round(loss, 4)}), flush=True)
       if step % 100 == 0 or step == steps - 1 else None)
print(f"{steps} steps in {time.time() - t:.0f} s", flush=True)
measure(f"worked what-at {steps} steps lr {lr} mix {mix}")
lm.to(torch.bfloat16).save_pretrained(out)
tokenizer.save_pretrained(out)
