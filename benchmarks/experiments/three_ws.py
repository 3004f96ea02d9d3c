"""W after the captions, after the fit onto the cell words, after stage 2: where each puts an object's token.

For a quickstart RUN made with the fit (the tiny preset's default): how often the nearest colour/shape word names the
object's colour or shape and the nearest cell word is its own, names what stands there, names the cell (100 held-out
scenes); the tokens' norms and best cosine to a word (32 scenes); each attribute's share of an object token's
variance (300 scenes). W after the captions is ``stage1/captions_only`` (``align.captions_only_dir``).
Usage: python benchmarks/experiments/three_ws.py RUN
"""
import sys
from pathlib import Path

import torch

from minillava.align import captions_only_dir
from minillava.data.records import image_path, load_split
from minillava.inference import pixels_for
from minillava.model.build import build_model, load_model
from minillava.viz.figures import nearest_cell_word_rate, nearest_word_rate, object_patch
from minillava.viz.projector import attribute_variance, modality_gap

torch.set_num_threads(2)
run = Path(sys.argv[1])
data = run / "data"
fitted, processor, cfg = load_model(run / "stage1")
if captions_only_dir(run / "stage1") == run / "stage1":
    sys.exit(f"{run / 'stage1'}: no captions_only/ beside the fitted W; RUN must be a quickstart made with the fit")
captions, _, _ = load_model(captions_only_dir(run / "stage1"))
torch.manual_seed(0)
untrained, _ = build_model(cfg)
models = {"untrained": untrained, "after the captions": captions, "after the fit": fitted,
          "after stage 2": load_model(run / "stage2")[0]}

pixels = pixels_for(processor, [image_path(data, r) for r in load_split(data, "test")[:32]])
records = load_split(data, "test")[:300]
z_all = fitted.image_features(pixels_for(processor, [image_path(data, r) for r in records]))  # (300, 9, Dv)
objects = [(i, object_patch(r, o), {"color": o.color, "shape": o.category, "size": o.size, "cell": object_patch(r, o)})
           for i, r in enumerate(records) for o in r.objects]
for name, model in models.items():
    words, cells = nearest_word_rate(model, processor, data, 100), nearest_cell_word_rate(model, processor, data, 100)
    gap = modality_gap(model, model.image_features(pixels))
    shares = attribute_variance(model, z_all, objects)
    print(f"{name:>18}: colour/shape word {words['rate']:.3f} | cell word own {cells['word']:.3f} what "
          f"{cells['what']:.3f} cell {cells['cell']:.3f} ({cells['n_objects']} objects) | norm "
          f"{gap['image_token_norm']:.2f} (word {gap['word_norm']:.2f}) best cosine {gap['mean_best_cosine']:.2f} | "
          f"shares H_v {shares['H_v']} (Z_v {shares['Z_v']})")
