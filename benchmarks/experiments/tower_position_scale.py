"""Train the recipe's tower with a stronger fixed position code into DIR (the BPE as run_stage0 makes it; no LM).
Usage: python benchmarks/experiments/tower_position_scale.py DIR SCALE THREADS  (then: bash scripts/quickstart.sh
--out RUN vision_name=$PWD/DIR/vision; benchmarks/README.md, "A stronger fixed position code")"""
import json
import sys
from pathlib import Path
import torch
from minillava.model.backbones import train_tiny_tokenizer
from minillava.stage0 import Stage0Config, corpus, recipe_scenes
from minillava.stage0.recipe import train_tower
out, scale, threads = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
out.mkdir(parents=True, exist_ok=True)
cfg = Stage0Config(clip_fixed_position=scale)
scenes, held_out = recipe_scenes(cfg)
tokenizer = train_tiny_tokenizer(corpus(scenes, cfg.bpe_template_weight), cfg.vocab_size)  # as run_stage0
probes, seconds = train_tower(out, cfg, scenes, held_out, tokenizer)
print(json.dumps({"probes": probes, "seconds": seconds}))
