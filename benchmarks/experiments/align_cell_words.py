"""The quickstart with W also fitted onto the chat LM's cell words between stage 1 and stage 2 (issue 25).

§4.2 calls stage 1 training "a compatible visual tokenizer for the frozen LLM". The stand-in LM has exact words for
the tiny tower's nine patch tokens: stage 0 taught it to read a scene as nine cell words, and with those words in
the image's places stage 2 keeps the LM's lookup (`cell_word_stage2.py`). Here, after stage 1's captions, W is fitted
for STEPS steps onto them (`minillava.align.align_to_cell_words`, the scenes drawn in the order of seed 0 whatever
the run's seed; its classification term weighted by ``stage1_cell_word_ce``, 0 for squared error alone), then stage 2
runs as configured. For seed 0 this is the package's `stage1_cell_word_steps=STEPS`
(the same weights); for other seeds that option draws its scenes by the run's seed. Prints how often the nearest cell
word (cosine) of each of 300 held-out scenes' nine tokens is the right one, before and after the fit.
With ``--w-frozen`` stage 2 then trains the LM alone, W kept where the fit put it (a departure from §4.2, whose stage 2
trains W too; a trial only).
Usage: python benchmarks/experiments/align_cell_words.py RUN STEPS [--w-frozen] [key=value ...]
"""
import sys

import torch

import minillava.quickstart as quickstart
import minillava.train as train
from minillava.align import align_to_cell_words, cell_word_targets, nearest_cell_words
from minillava.data.records import image_path, load_split
from minillava.inference import pixels_for

steps = int(sys.argv[2])
w_frozen = "--w-frozen" in sys.argv
overrides = [a for a in sys.argv[3:] if a != "--w-frozen"]
run_stage, set_trainable = quickstart.run_stage, train.set_trainable


def lm_only_in_stage2(model, stage, *args):
    params = set_trainable(model, stage, *args)
    if stage == 2:
        model.projector.requires_grad_(False)
        params = [p for p in params if p.requires_grad]
    return params


def nearest_right(model, z: torch.Tensor, ids: torch.Tensor) -> float:
    """Share of the B·9 projected tokens whose nearest cell word (cosine) is their own."""
    return (nearest_cell_words(model, z) == ids).float().mean().item()


def aligned_stages(cfg, stage, out, **kwargs):
    model, summary = run_stage(cfg, stage, out, **kwargs)
    if stage == 1 and steps:
        test = load_split(cfg.data_dir, "test")[:300]
        z, ids = model.image_features(pixels_for(summary["processor"], [image_path(cfg.data_dir, r) for r in test])), \
            cell_word_targets(model.tokenizer, test)
        before = nearest_right(model, z, ids)
        fit = align_to_cell_words(model, summary["features"], load_split(cfg.data_dir, "train"), steps, 64, seed=0,
                                  ce_weight=cfg.stage1_cell_word_ce)
        print(f"align: {steps} steps, loss {fit['first_loss']:.4f} -> {fit['last_loss']:.4f}; nearest cell word "
              f"right (held out) {before:.3f} -> {nearest_right(model, z, ids):.3f}", flush=True)
    return model, summary


quickstart.run_stage = aligned_stages
if w_frozen:
    train.set_trainable = lm_only_in_stage2
metrics = quickstart.run_quickstart(sys.argv[1], overrides=overrides, progress=False)
print(metrics["accuracy"])
