"""The quickstart with stage 2 in two parts: W alone on the instruction data for K steps, then W and the LM (issue 25).

`stage2_frozen_lm.py` shows that W alone, on stage 2's data, lands the image where the chat LM's own "What is at"
lookup half works, and that end-to-end training on images the LM cannot yet read moves its answer to the data's
prior. Here stage 2's budget is split: its first K steps train W alone (the LM frozen, a departure from §4.2 for this
trial only), the rest W and the LM from there, each part with its own warmup and cosine (the run's total steps, batch
and lr as configured). Usage: python benchmarks/experiments/stage2_w_first.py RUN K [key=value ...]
"""
import dataclasses
import sys

import minillava.model.freeze as freeze
import minillava.quickstart as quickstart

k = int(sys.argv[2])
run_stage = quickstart.run_stage


def two_part_stage2(cfg, stage, out, **kwargs):
    if stage != 2:
        return run_stage(cfg, stage, out, **kwargs)
    freeze.STAGES[2] = dict(train_lm=False)
    model, _ = run_stage(dataclasses.replace(cfg, stage2_steps=k), 2, out.parent / "stage2_w_only", **kwargs)
    freeze.STAGES[2] = dict(train_lm=True)
    return run_stage(dataclasses.replace(cfg, stage2_steps=cfg.stage2_steps - k), 2, out, **{**kwargs, "model": model})


quickstart.run_stage = two_part_stage2
metrics = quickstart.run_quickstart(sys.argv[1], overrides=sys.argv[3:], progress=False)
print(metrics["accuracy"])
