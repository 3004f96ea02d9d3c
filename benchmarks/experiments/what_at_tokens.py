""""What is at the {position}?" read from image tokens and from cell words, by the same trained model (issue 25).

The quickstart's stage-2 model (RUN/stage2) is asked of every cell of held-out scenes twice: once with the image
(H_v = W · Z_v over the nine patches) and once with the scene written as its nine cell words (cells named,
`stage0.vocab.scene_in_cell_words`) in the same nine places — the same LM, after stage 2. Teacher-forced to the
decision token ("There is" → " a"/" an" or " nothing"), per input: how often the right one wins, p(object), and the
attention share (mean over layers and heads) of that token on the named cell's place, for occupied and for empty
cells. Also the nine tokens' norms (H_v against the cell words' input embeddings), occupied and empty apart.
With LM (e.g. ``tiny``, the shipped chat LM) the cell words are read by that LM instead: the same lookup before
stage 2. Usage: python benchmarks/experiments/what_at_tokens.py RUN [SCENES] [THREADS] [LM]
"""
import json
import statistics
import sys
from pathlib import Path

import torch

from minillava.conversation import IMAGE_TOKEN, get_template, prompt_ids
from minillava.data.records import image_path, load_split
from minillava.data.shapes import POSITIONS, scene_objects
from minillava.data.teachers import object_at
from minillava.inference import pixels_for
from minillava.model.build import load_model
from minillava.stage0.vocab import scene_in_cell_words
from minillava.viz.attention import eager_attention

run = Path(sys.argv[1])
n_scenes = int(sys.argv[2]) if len(sys.argv) > 2 else 200
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
model, processor, _ = load_model(run / "stage2")
model.eval()
text_lm = model.lm
if len(sys.argv) > 4:
    from minillava.model.backbones import load_lm
    text_lm = load_lm(sys.argv[4])[0].eval()
tok = model.tokenizer
template = get_template("vicuna_v1", tok)
first = {w: tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in ("a", "an", "nothing")}
forced = torch.tensor(tok("There is", add_special_tokens=False)["input_ids"])


def cells(record) -> str:
    return scene_in_cell_words(scene_objects(record), where=True)


@torch.no_grad()
def decide(question: str, z=None, scene: str | None = None):
    """(p(object), attention share per scene place (9,)) at the decision token; the scene as image (``z``: (1, N, Dv))
    or as cell words (``scene``), either way nine tokens right after the system prompt's "USER: "."""
    if z is not None:
        ids = torch.cat([prompt_ids(f"{IMAGE_TOKEN}\n{question}", tok, template,
                                    image_tokens=model.num_image_tokens), forced])[None]
        places = (ids[0] == model.image_token_id).nonzero().squeeze(-1)
        embeds = model.embed(ids, z)
    else:
        ids = torch.cat([prompt_ids(f"{scene}\n{question}", tok, template, image_tokens=1), forced])[None]
        words = tok(scene, add_special_tokens=False)["input_ids"]
        assert len(words) == 9, words
        start = next(i for i in range(ids.shape[1]) if ids[0, i:i + 9].tolist() == words)
        places = torch.arange(start, start + 9)
        embeds = text_lm.get_input_embeddings()(ids)
    lm = model.lm if z is not None else text_lm
    with eager_attention(lm):
        out = lm(inputs_embeds=embeds, output_attentions=True)
    p = out.logits[0, -1].softmax(-1)
    some = p[first["a"]] + p[first["an"]]
    attn = torch.stack([a[0, :, -1, places] for a in out.attentions]).mean((0, 1))  # (9,)
    return (some / (some + p[first["nothing"]])).item(), (attn / attn.sum()).tolist(), embeds[0, places].norm(dim=-1)


records = load_split(run / "data", "test")[:n_scenes]
rows = {f"{source}, {kind}": [] for source in ("image", "cell words") for kind in ("occupied", "empty")}
norms = {f"{source}, {kind}": [] for source in ("image", "cell words") for kind in ("occupied", "empty")}
for record in records:
    z = model.image_features(pixels_for(processor, [image_path(run / "data", record)]))
    scene = cells(record)
    for cell, pos in enumerate(POSITIONS):
        kind = "occupied" if object_at(record, pos) else "empty"
        for source, kwargs in (("image", {"z": z}), ("cell words", {"scene": scene})):
            p_object, share, norm = decide(f"What is at the {pos}?", **kwargs)
            rows[f"{source}, {kind}"].append((p_object, share[cell]))
            if cell == 0:  # the nine tokens' norms, once per scene
                for c, value in enumerate(norm.tolist()):
                    norms[f"{source}, {'occupied' if object_at(record, POSITIONS[c]) else 'empty'}"].append(value)
result = {}
for key, xs in rows.items():
    right = sum((p > 0.5) == key.endswith("occupied") for p, _ in xs)
    result[key] = {"n": len(xs), "right": right, "p_object": round(statistics.mean(p for p, _ in xs), 3),
                   "share_on_named_cell": round(statistics.mean(s for _, s in xs), 3),
                   "token_norm": round(statistics.mean(norms[key]), 2)}
print(json.dumps({"run": str(run), "cell words read by": sys.argv[4] if len(sys.argv) > 4 else "RUN's LM",
                  "scenes": len(records), "uniform_share": round(1 / 9, 3), **result}, indent=1))
