"""Does the worked "What is at" answer's last step read the list the model just wrote? (issue 25)

For a quickstart trained with ``teacher_worked_what_at=true``: teacher-force the teacher's own worked answer
("At the top center there is a large red circle and ..., so at the {pos} there is") and read the next token:
p(" a"/" an") against p(" nothing"). Then the same with the list changed and the image not: for an occupied cell the
asked object is left out of the list; for an empty cell an object (one of the scene's, moved) is listed there. A last
step that reads the list follows the change; one that reads the image does not.
Usage: python benchmarks/experiments/worked_what_at_forced.py RUN [SCENES]   (RUN: a quickstart directory)"""
import statistics
import sys
from pathlib import Path

import torch

from minillava.conversation import IMAGE_TOKEN, get_template, prompt_ids
from minillava.data.records import image_path, load_split
from minillava.data.shapes import POSITIONS
from minillava.data.teachers import describe, object_at, position
from minillava.data.words import a, join_words
from minillava.inference import pixels_for
from minillava.model.build import load_model

run = Path(sys.argv[1])
torch.set_num_threads(1)
model, processor, _ = load_model(run / "stage2")
model.eval()
tok = model.tokenizer
tmpl = get_template("vicuna_v1", tok)
ids_of = {w: tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in ("a", "an", "nothing")}


@torch.no_grad()
def p_object(z, question: str, forced: str) -> float:
    """p(" a" or " an") / (that + p(" nothing")) at the token after ``forced``; ``z``: the scene's Z_v, (1, N, Dv)."""
    prompt = prompt_ids(f"{IMAGE_TOKEN}\n{question}", tok, tmpl, image_tokens=model.num_image_tokens)
    ids = torch.cat([prompt, torch.tensor(tok(forced, add_special_tokens=False)["input_ids"])])[None]
    p = model.lm(inputs_embeds=model.embed(ids, z)).logits[0, -1].softmax(-1)
    some = p[ids_of["a"]] + p[ids_of["an"]]
    return (some / (some + p[ids_of["nothing"]])).item()


def worked(items: list[tuple[str, str]], pos: str) -> str:
    """The worked answer up to the decision, from (cell, object) items."""
    items = sorted(items, key=lambda item: POSITIONS.index(item[0]))
    listed = join_words([f"at the {cell} there is {what}" for cell, what in items])
    return f"A{listed[1:]}, so at the {pos} there is"


records = load_split(run / "data", "test")[:int(sys.argv[2]) if len(sys.argv) > 2 else 200]
rows = {key: [] for key in ("occupied", "occupied, left out of the list", "empty", "empty, listed there")}
for r in records:
    z = model.image_features(pixels_for(processor, [image_path(run / "data", r)]))
    items = [(position(o, r), a(describe(o))) for o in r.objects]
    for pos in POSITIONS:
        question = f"What is at the {pos}?"
        obj = object_at(r, pos)
        if obj is not None:
            rows["occupied"].append(p_object(z, question, worked(items, pos)))
            rest = [item for item in items if item[0] != pos]
            if rest:  # a one-object scene has nothing left to list
                rows["occupied, left out of the list"].append(p_object(z, question, worked(rest, pos)))
        else:
            rows["empty"].append(p_object(z, question, worked(items, pos)))
            rows["empty, listed there"].append(p_object(z, question, worked(items + [(pos, items[0][1])], pos)))
for key, xs in rows.items():
    print(f"{key:32s} n={len(xs):4d}: p(an object) {statistics.mean(xs):.3f}, an object preferred "
          f"{sum(x > 0.5 for x in xs):4d}")
