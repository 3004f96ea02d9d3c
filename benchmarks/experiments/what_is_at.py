"""Why "What is at the {position}?" is answered "nothing": the decision token, and where it looks (issue 25).

The answer is "There is nothing at the {pos}." or "There is a {size} {colour} {shape} at the {pos}."; the two part at
the token after "There is". Teacher-forced to that point, per held-out question: p(" a") against p(" nothing"), and
the share of that token's image attention (mean over layers and heads) on the named cell and on each other occupied
cell, for occupied and empty named cells; beside it the same for "Where is the {colour} {shape}?" at the token that names the cell (after "... is at
the"), whose attention should land on the object's cell.
Usage: python benchmarks/experiments/what_is_at.py RUN   (RUN: a quickstart directory)"""
import statistics
import sys
from pathlib import Path

import torch

from minillava.conversation import IMAGE_TOKEN, get_template, prompt_ids
from minillava.data.grid import cell_of_box
from minillava.data.records import image_path, load_split
from minillava.data.shapes import POSITIONS
from minillava.data.teachers import describe, object_at
from minillava.inference import pixels_for
from minillava.model.build import load_model
from minillava.viz.attention import eager_attention

run = Path(sys.argv[1])
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
model, processor, _ = load_model(run / "stage2")
model.eval()
tok = model.tokenizer
tmpl = get_template("vicuna_v1", tok)


@torch.no_grad()
def decision(z, question, forced):
    """Next-token distribution after ``forced`` and that position's attention share per image cell (9,).
    ``z``: the scene's Z_v, (1, N, Dv)."""
    prompt = prompt_ids(f"{IMAGE_TOKEN}\n{question}", tok, tmpl, image_tokens=model.num_image_tokens)
    ids = torch.cat([prompt, torch.tensor(tok(forced, add_special_tokens=False)["input_ids"])])[None]
    with eager_attention(model.lm):
        out = model.lm(inputs_embeds=model.embed(ids, z), output_attentions=True)
    image_pos = (ids[0] == model.image_token_id).nonzero().squeeze(-1)
    attn = torch.stack([a[0, :, -1, image_pos] for a in out.attentions]).mean((0, 1))  # (9,)
    return out.logits[0, -1].softmax(-1), attn / attn.sum()


def first(word):
    return tok(" " + word, add_special_tokens=False)["input_ids"][0]


records = load_split(run / "data", "test")[:200]
features = {r.file_name: model.image_features(pixels_for(processor, [image_path(run / "data", r)])) for r in records}
rows = {"occupied": [], "empty": []}
for r in records:
    for pos in POSITIONS:
        obj = object_at(r, pos)
        p, share = decision(features[r.file_name], f"What is at the {pos}?", "There is")
        cell = POSITIONS.index(pos)
        others = [cell_of_box(o.bbox, r.width, r.height) for o in r.objects if o is not obj]  # occupied, not named
        rows["occupied" if obj else "empty"].append((p[first("a")].item(), p[first("nothing")].item(), share[cell].item(),
                                                     share[others].mean().item() if others else float("nan")))
for name, xs in rows.items():
    print(f"What is at, {name:8s} n={len(xs):4d}: p(a) {statistics.mean(x[0] for x in xs):.3f}  p(nothing) "
          f"{statistics.mean(x[1] for x in xs):.3f}  'a' > 'nothing' {sum(x[0] > x[1] for x in xs):4d}  "
          f"attention share on the named cell {statistics.mean(x[2] for x in xs):.3f}, on each other occupied cell "
          f"{statistics.mean(x[3] for x in xs if x[3] == x[3]):.3f} (uniform 0.111)")
where = []
for r in records:
    for o in r.objects:
        pos = POSITIONS[cell_of_box(o.bbox, r.width, r.height)]
        _, share = decision(features[r.file_name], f"Where is the {describe(o, with_size=False)}?",
                            f"The {describe(o, with_size=False)} is at the")
        where.append(share[POSITIONS.index(pos)].item())
print(f"Where is, the token naming the cell, n={len(where)}: attention share on the object's cell "
      f"{statistics.mean(where):.3f}")
