"""How close the fit of `minillava.align` brings W's tokens to the chat LM's cell words, object cells and empty ones
apart (issue 25).

Takes RUN's stage-1 W as the captions left it (``stage1/captions_only`` of a run made with the fit, or ``stage1`` of
one made without it: ``stage1_cell_word_steps=0``), fits it for
STEPS steps (64 scenes each, seed 0) with the classification term weighted CE (0: squared error alone), and reports
for the 300 first held-out scenes how often the cell word nearest (cosine) to an object's token is its own, names what
stands there, names the cell; and how often an empty cell's token is nearest to its own "empty" word.
Usage: python benchmarks/experiments/cell_word_fit.py RUN [STEPS] [CE]
"""
import sys
from pathlib import Path

import torch

from minillava.align import align_to_cell_words, captions_only_dir, cell_word_targets, nearest_cell_words
from minillava.data.records import image_path, load_split
from minillava.inference import pixels_for
from minillava.model.build import load_model

torch.set_num_threads(1)
run = Path(sys.argv[1])
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
ce = float(sys.argv[3]) if len(sys.argv) > 3 else 0.05
data = run / "data"
model, processor, _ = load_model(captions_only_dir(run / "stage1"))


@torch.no_grad()
def features(records) -> torch.Tensor:
    return torch.cat([model.image_features(pixels_for(processor, [image_path(data, r) for r in records[i:i + 256]]))
                      for i in range(0, len(records), 256)])  # (B, 9, Dv)


train, test = load_split(data, "train"), load_split(data, "test")[:300]
z_test, truth = features(test), cell_word_targets(model.tokenizer, test)


def rates() -> dict:
    guess = nearest_cell_words(model, z_test)  # (B, 9) token ids
    pairs = list(zip(model.tokenizer.convert_ids_to_tokens(guess.flatten().tolist()),
                     model.tokenizer.convert_ids_to_tokens(truth.flatten().tolist())))
    objects = [(g, t) for g, t in pairs if not t.endswith(":empty>")]
    empty = [(g, t) for g, t in pairs if t.endswith(":empty>")]
    share = lambda hits: round(sum(hits) / len(hits), 3)  # noqa: E731
    return {"objects": len(objects), "own word": share([g == t for g, t in objects]),
            "what": share([g.split(":")[1] == t.split(":")[1] for g, t in objects]),
            "cell": share([g.split(":")[0] == t.split(":")[0] for g, t in objects]),
            "empty cells": len(empty), "empty right": share([g == t for g, t in empty])}


print("after the captions:", rates())
fit = align_to_cell_words(model, dict(zip((r.file_name for r in train), features(train))), train, steps, 64, seed=0,
                          ce_weight=ce)
print(f"after {steps} fit steps (classification weight {ce}; loss {fit['first_loss']:.4f} -> {fit['last_loss']:.4f}):",
      rates())
