"""Does a quickstart model answer its own training scenes better than held-out ones? Overfitting or not learning.

Asks the quickstart's held-out question draw (``eval.accuracy.heldout_questions``: three questions per scene) of the
first 600 training scenes and of the 600 test scenes, and prints exact-match accuracy per kind for both. Equal
accuracy means the model has not learned a kind on the scenes it trained on either, so more of the same data or
regularisation will not help; a gap means it memorised.
Usage: python benchmarks/experiments/train_vs_heldout.py RUN_DIR [THREADS]
"""
import json
import sys
from pathlib import Path

import torch

from minillava.data.records import load_split
from minillava.eval.accuracy import evaluate_exact, heldout_questions
from minillava.model.build import load_model

torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
run = Path(sys.argv[1])
model, processor, _ = load_model(run / "stage2")
for split in ("train", "test"):
    rows = heldout_questions(load_split(run / "data", split)[:600])
    per_kind = evaluate_exact(model, processor, rows, run / "data")["per_kind"]
    print(split, json.dumps({kind: f"{v['accuracy']:.3f} ({v['n']})" for kind, v in per_kind.items()}))
