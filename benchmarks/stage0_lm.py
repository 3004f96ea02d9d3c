"""Stage 0's chat-LM step with and without the shared system prompt (``fit_lm(share_prefix=True)``).

Stage 0 trains the stand-in chat LM on text dialogues in the stage-2 template; like stage 2's, every chat row opens
with the same 75 tokens (BOS, the Vicuna system prompt, ``USER:``). ``stage0.lm.shared_prefix_loss`` runs them once
per batch (rows grouped by how they open: stage-1 ``plain`` rows have no system prompt). Both variants take the
same batches of the cell-word phase's mix (``cell_words_sample``) on the shipped LM, step by step in turn
(forward, backward, clipping, AdamW), so a change of machine load hits both alike. Nothing here asserts a time.

    python benchmarks/stage0_lm.py --steps 30        # writes benchmarks/results/stage0_lm_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minillava.conversation import get_template, tokenize_conversation  # noqa: E402
from minillava.data.dataset import pad_right  # noqa: E402
from minillava.model.backbones import load_lm  # noqa: E402
from minillava.stage0 import Stage0Config, recipe_scenes  # noqa: E402
from minillava.stage0.lm import shared_prefix_loss  # noqa: E402
from minillava.stage0.vocab import cell_words_sample  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=Stage0Config().lm_cells_batch)
    parser.add_argument("--out", default="benchmarks/results/stage0_lm_cpu.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    lm, tokenizer = load_lm("tiny")
    models = {"plain": lm, "shared_prefix": copy.deepcopy(lm)}
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    train, _ = recipe_scenes(Stage0Config(scenes=2000))
    rng, template = random.Random(0), get_template("vicuna_v1")
    seconds = {k: 0.0 for k in models}
    answers = tokens = 0
    for step in range(args.warmup + args.steps):
        samples = [cell_words_sample(*rng.choice(train)[:2], rng, True) for _ in range(args.batch)]
        items = [tokenize_conversation(s, tokenizer, s.pop("template", template), image_tokens=1, max_length=256)
                 for s in samples]
        for name, model in models.items():
            start = time.perf_counter()
            loss = model(**pad_right(items, tokenizer.pad_token_id)).loss if name == "plain" else \
                shared_prefix_loss(model, items, tokenizer)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizers[name].step(), optimizers[name].zero_grad(set_to_none=True)
            if step >= args.warmup:
                seconds[name] += time.perf_counter() - start
        if step >= args.warmup:
            answers += sum(int((x["labels"] != -100).sum()) for x in items)
            tokens += sum(len(x["input_ids"]) for x in items)
    result = {"steps": args.steps, "batch": args.batch, "answer_tokens": answers, "tokens": tokens,
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                         f"{torch.backends.cpu.get_cpu_capability()}", "torch": torch.__version__,
              "variants": {name: {"ms_per_step": round(1000 * s / args.steps, 1),
                                  "answer_tokens_per_s": round(answers / s, 1),
                                  "ratio": round(seconds["plain"] / s, 2)} for name, s in seconds.items()}}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"{'variant':<15} {'ms/step':>8} {'answer tok/s':>13} {'ratio':>6}")
    for name, row in result["variants"].items():
        print(f"{name:<15} {row['ms_per_step']:>8} {row['answer_tokens_per_s']:>13} {row['ratio']:>5}×")


if __name__ == "__main__":
    main()
