"""Stage-2 data whose "What is at the {position}?" asks of an occupied cell half the time; the held-out questions unchanged.

The run behind benchmarks/README.md, "Is 'nothing' a habit of stage 2's data?": the quickstart with its training
instructions made by a teacher that, after drawing its random cell, with chance 0.5 asks of an occupied cell instead
(a coin of its own; "What color is the shape at the {position}?" keeps the cell first drawn). The config field
``teacher_occupied`` does the same inside the teacher (the colour question then follows the new cell), so its samples
differ in detail from these. Usage: python benchmarks/experiments/balanced_what_at.py THREADS OUT_DIR [key=value ...]
(e.g. lm_name=DIR for another chat LM). It copies nothing: the scenes are made in OUT_DIR/data as the quickstart does.
"""
import random, sys
import torch
import minillava.data.teachers as T
import minillava.quickstart as Q
from minillava.data.grid import POSITIONS
torch.set_num_threads(int(sys.argv[1]))
out = sys.argv[2]; overrides = sys.argv[3:]
orig_questions, orig_prepare = T.scene_questions, Q.prepare_data

def balanced(record, rng):
    qas = orig_questions(record, rng)
    coin = random.Random(f"balanced:{record.image_id}:{rng.random()}")
    occupied = [p for p in POSITIONS if T.object_at(record, p) is not None]
    for i, qa in enumerate(qas):
        if qa.question.startswith("What is at") and occupied and coin.random() < 0.5:
            qas[i] = T.what_is_at(record, coin.choice(occupied))
    return qas

def prepare(cfg, log=print):  # only the training instructions are made by the balanced teacher
    T.scene_questions = balanced
    try:
        return orig_prepare(cfg, log)
    finally:
        T.scene_questions = orig_questions
Q.prepare_data = prepare
Q.run_quickstart(out, overrides=overrides, progress=False)
