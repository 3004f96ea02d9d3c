"""Stage-2 answer tokens per second: where the tiny quickstart's stage-2 compute goes, and what each lever buys.

A stage-2 sample of the tiny preset averages about 150 tokens of which about 30 carry loss; the Vicuna system prompt
(BOS + system + ``USER:``) is 75 of them and identical in every row. Each variant below runs the trainer's own step
(``train.prepare`` + ``train.train_step``: forward, backward, clipping, AdamW) on length-grouped batches of the real
rule-teacher data, the shipped backbones, features from memory:

    today           one sample per (image, response type), every row computes its own system prompt
    shared_prefix   the same batches; the rows' common prefix runs through the LM once (``share_prefix=true``)
    joined          an image's conversation, reasoning and description samples joined into one multi-turn sample
                    (conversation turns first, the description last), a third as many rows per step
    joined_shared   joined + shared prefix
    packed          today's samples packed into rows of ≤ max_length (``pack_sequences=true``)
    joined_packed   joined samples, packed
    compiled_shared shared prefix with the LM decoder under ``torch.compile`` (``--compile``; slow first step)
    template_bpe_shared  shared prefix, with a byte-level BPE of the same size trained on the stage-0 corpus plus
                    the chat template once per scene (lever 3: the shipped BPE saw the system prompt once); the
                    LM is a fresh one of the shipped shape and vocabulary layout (cell words added): the time of
                    a step does not depend on what the weights have learned. Same scenes, same answers.

Variants take turns step by step (round robin), so a change of machine load hits all of them alike. Reported per
variant: mean ms per step (batches are grouped by length, so step times spread widely and the median
says little about throughput), answer tokens/s (the tokens eq. 3 sums over), question–answer turns/s, samples/s,
tokens/s computed, and each rate's ratio to ``today``. No MFU: on a shared CPU the peak it divides by is not a
fixed number. Nothing here asserts a time.

    python benchmarks/stage2_answers.py --steps 20                  # writes benchmarks/results/stage2_answers_cpu.*
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

transformers.utils.logging.disable_progress_bar()
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VARIANTS = {  # name: (joined samples?, config overrides); TEMPLATE_BPE's variants also swap the tokenizer
    "today": (False, dict(share_prefix=False)),
    "shared_prefix": (False, dict(share_prefix=True)),
    "joined": (True, dict(share_prefix=False)),
    "joined_shared": (True, dict(share_prefix=True)),
    "packed": (False, dict(share_prefix=False, pack_sequences=True)),
    "joined_packed": (True, dict(share_prefix=False, pack_sequences=True)),
    "compiled_shared": (False, dict(share_prefix=True, compile=True)),
    "template_bpe_shared": (False, dict(share_prefix=True)),
}
TEMPLATE_BPE = {"template_bpe_shared"}
BPE_SCENES = None  # scenes the swapped BPE is trained on (None: the recipe's; the smoke test takes fewer)


def template_bpe_tokenizer():
    """A byte-level BPE of the recipe's size trained as stage 0 would with ``bpe_template_weight=1``
    (``stage0.corpus(..., template_weight=1)``), cell words added as in the shipped LM's tokenizer."""
    from minillava.model.backbones import train_tiny_tokenizer
    from minillava.stage0 import Stage0Config, cell_words, corpus, recipe_scenes

    cfg = Stage0Config(scenes=BPE_SCENES or Stage0Config.scenes)
    scenes, _ = recipe_scenes(cfg)
    tokenizer = train_tiny_tokenizer(corpus(scenes, template_weight=1), cfg.vocab_size)
    tokenizer.add_tokens(cell_words(cfg.lm_cells_where))
    return tokenizer


def with_fresh_lm(model, tokenizer):
    """``model`` with its chat LM swapped for a fresh one of the shipped shape on ``tokenizer``'s vocabulary."""
    from transformers import LlamaForCausalLM

    from minillava.conversation import IMAGE_TOKEN
    from minillava.model.backbones import tiny_lm_config

    model.lm = LlamaForCausalLM(tiny_lm_config(len(tokenizer), tokenizer))
    model.tokenizer, model.image_token_id = tokenizer, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    return model


JOIN_ORDER = ("conv", "complex", "detail")  # short key answers first; the full description last, so it cannot
# hand the earlier questions their answers in text


def join_by_image(samples: list[dict]) -> list[dict]:
    """One multi-turn sample per image: its samples' turns in JOIN_ORDER, ``<image>`` once, at the start."""
    from minillava.data.llava_json import make_sample
    from minillava.conversation import IMAGE_TOKEN

    by_image: dict[str, list[dict]] = {}
    for s in samples:
        by_image.setdefault(s["image"], []).append(s)
    joined = []
    for image, group in by_image.items():
        group.sort(key=lambda s: JOIN_ORDER.index(s.get("type", "conv")))
        turns = [(c[i]["value"].replace(IMAGE_TOKEN + "\n", ""), c[i + 1]["value"])
                 for c in (s["conversations"] for s in group) for i in range(0, len(c), 2)]
        joined.append(make_sample(f"{Path(image).stem}_joined", image, turns))
    return joined


def datasets(tokenizer, n_images: int, seed: int = 0) -> dict:
    """{"separate": InstructDataset, "joined": InstructDataset} of the same scenes, as stage 2 tokenises them."""
    from minillava.conversation import get_template
    from minillava.data.dataset import InstructDataset
    from minillava.data.shapes import generate_split
    from minillava.data.teachers import generate_rule_instructions

    records = [scene[0] for scene in generate_split(n_images, "train", seed)]
    samples = generate_rule_instructions(records, seed=seed)
    out = {}
    for name, rows in (("separate", samples), ("joined", join_by_image(samples))):
        out[name] = InstructDataset(rows, tokenizer, get_template("vicuna_v1"), image_tokens=9, max_length=384)
        g = torch.Generator().manual_seed(seed)
        out[name].attach_features(torch.randn(len(out[name].images), 9, 128, generator=g))  # (images, N, Dv)
    return out


def turns_of(dataset, indices: list[int]) -> int:
    """Question–answer turns in the samples ``indices`` (an answer ends at each labelled run)."""
    total = 0
    for i in indices:
        labelled = (dataset.items[i]["labels"] != -100).long()
        total += int((labelled[1:] - labelled[:-1] == 1).sum()) + int(labelled[0])
    return total


def run(steps: int, warmup: int, batch: int, variants: list[str], out: Path, joined_rows: int = 0) -> dict:
    from minillava.config import load_config
    from minillava.model.build import build_model
    from minillava.train import prepare, token_counts, train_step

    torch.manual_seed(0)
    probe, _ = build_model(load_config("tiny"))
    n_images = max(64, (steps + warmup) * batch // 3 + batch)
    data = datasets(probe.tokenizer, n_images)
    bpe = template_bpe_tokenizer() if TEMPLATE_BPE & set(variants) else None  # trained once, for every such variant
    if bpe is not None:
        data["template_bpe"] = datasets(bpe, n_images)["separate"]
    runs = {}
    for name in variants:
        joined, overrides = VARIANTS[name]
        rows = (joined_rows or max(1, round(batch / 3))) if joined else batch  # default: about the same answers per step
        cfg = load_config("tiny", {**{k: str(v) for k, v in overrides.items()}, "stage2_batch": str(rows),
                                   "stage2_steps": str(steps + warmup)})
        model, _ = build_model(cfg)
        if name in TEMPLATE_BPE:
            model = with_fresh_lm(model, bpe)
        trainer = prepare(model, cfg, 2, Path(tempfile.mkdtemp()))
        ds = data["template_bpe" if name in TEMPLATE_BPE else "joined" if joined else "separate"]
        runs[name] = dict(cfg=cfg, trainer=trainer, ds=ds, rows=rows,
                          times=[], answers=0, tokens=0, turns=0, samples=0, first_s=None)
    for step in range(steps + warmup):  # round robin: each variant's k-th step runs beside the others' k-th
        for name, r in runs.items():
            indices = r["ds"].batch_indices(step, r["rows"], 0, r["cfg"].group_by_length)
            n_answer, n_tokens = token_counts(r["ds"], indices)
            t0 = time.perf_counter()
            train_step(r["trainer"], r["ds"], step, indices, n_answer)
            took = time.perf_counter() - t0
            if step == 0:
                r["first_s"] = took
            if step >= warmup:
                r["times"].append(took)
                r["answers"] += n_answer
                r["tokens"] += n_tokens
                r["turns"] += turns_of(r["ds"], indices)
                r["samples"] += len(indices)
    results = {}
    for name, r in runs.items():
        total = sum(r["times"])
        results[name] = {"rows_per_step": r["rows"], "ms_per_step": 1000 * total / len(r["times"]),
                         "median_ms_per_step": 1000 * statistics.median(r["times"]),
                         "first_step_s": r["first_s"], "answer_tokens_per_s": r["answers"] / total,
                         "turns_per_s": r["turns"] / total, "samples_per_s": r["samples"] / total,
                         "tokens_per_s": r["tokens"] / total, "answer_share": r["answers"] / r["tokens"]}
    base = results.get("today")
    if base:
        for res in results.values():
            res["answer_tokens_ratio"] = res["answer_tokens_per_s"] / base["answer_tokens_per_s"]
            res["turns_ratio"] = res["turns_per_s"] / base["turns_per_s"]
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
                          "transformers": transformers.__version__},
              "steps": steps, "warmup": warmup, "batch": batch, "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(table(report))
    return report


def table(report: dict) -> str:
    lines = ["| variant | rows/step | ms/step | answer tokens/s | ratio | Q–A turns/s | ratio | samples/s | tokens/s "
             "| answer share |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in report["results"].items():
        lines.append(f"| {name} | {r['rows_per_step']} | {r['ms_per_step']:.0f} | {r['answer_tokens_per_s']:.0f} | "
                     f"**{r.get('answer_tokens_ratio', 1):.2f}×** | {r['turns_per_s']:.1f} | {r.get('turns_ratio', 1):.2f}× "
                     f"| {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} | {r['answer_share']:.1%} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=32, help="rows per step of separate samples (joined: a third)")
    p.add_argument("--joined-rows", type=int, default=0, help="rows per step of joined samples (0: a third of --batch)")
    p.add_argument("--compile", action="store_true", help="add compiled_shared (torch.compile; slow first step)")
    p.add_argument("--only", help="comma-separated variants")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/stage2_answers_cpu"))
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else [v for v in VARIANTS if args.compile or v != "compiled_shared"]
    report = run(args.steps, args.warmup, args.batch, names, Path(args.out), args.joined_rows)
    print(table(report))
    return report


if __name__ == "__main__":
    main()
