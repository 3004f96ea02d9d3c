"""Where does "What is at the {position}?" look? On held-out scenes of 2+ objects, the attention from the answer's
first object word (a shape, a colour or "nothing") to the asked cell's patch and to each other object's patch, as a
multiple of the uniform share over the patches: mean of all heads, and the run's most grounded head (`metrics.json`).
Asked of the first object's cell ("occupied"), of the first empty cell ("empty"), and "What color is the shape at"
the first object's cell ("colour_at"). Usage: python benchmarks/experiments/what_at_attention.py RUN_DIR N_SCENES
"""
import json, sys
import torch
from pathlib import Path
from minillava.model.build import load_model
from minillava.data.records import image_path, load_split
from minillava.data.teachers import position, object_at
from minillava.data.grid import POSITIONS
from minillava.viz.attention import answer_attention, aggregate
from minillava.viz.figures import object_patch
from minillava.data.shapes import SHAPES
torch.set_num_threads(1)
run = Path(sys.argv[1]); n = int(sys.argv[2])
model, processor, cfg = load_model(run / "stage2")
from minillava.inference import pixels_for
L, H = json.loads((run / "metrics.json").read_text())["grounding"]["attention_by_head"]["best_head"]
res = {"occupied": [], "empty": [], "colour_at": []}
for record in [r for r in load_split(run / "data", "test") if len(r.objects) >= 2][:n]:
    z = model.image_features(pixels_for(processor, [image_path(run / "data", record)]))[0]
    obj = record.objects[0]; pos = position(obj, record)
    empty = next(p for p in POSITIONS if object_at(record, p) is None)
    for kind, q, cell in [("occupied", f"What is at the {pos}?", object_patch(record, obj)),
                          ("colour_at", f"What color is the shape at the {pos}?", object_patch(record, obj)),
                          ("empty", f"What is at the {empty}?", POSITIONS.index(empty))]:
        r = answer_attention(model, z, q)
        words = [t.strip() for t in r["tokens"]]
        k = next((i for i, w in enumerate(words) if w in SHAPES or w == "nothing" or w in ("red","green","blue","yellow","purple","orange")), None)
        if k is None: continue
        a = r["attn"][:, :, k]  # (L, H, N)
        mean = aggregate(r, "mean")[k]
        others = [object_patch(record, o) for o in record.objects if object_patch(record, o) != cell]
        share = mean / mean.sum() * len(mean); head = a[L, H] / a[L, H].sum() * a.shape[-1]
        res[kind].append((float(share[cell]), float(head[cell]), float(share[others].mean()), float(head[others].mean())))
for kind, rows in res.items():
    if rows:
        m = [sum(r[i] for r in rows) / len(rows) for i in range(4)]
        print(kind, len(rows), "× uniform, asked patch / each other object: mean of heads %.2f / %.2f, best head L%dH%d %.2f / %.2f" % (m[0], m[2], L+1, H+1, m[1], m[3]))
