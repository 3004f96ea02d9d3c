"""Relations in text, asked more on the shipped chat LM: one or two relation questions a dialogue about a training
scene in cell words (a pair in one row or column with chance LINE, a diagonal pair otherwise, where the scene has
one), and a share MIX of phase-3 dialogues, from the bf16 weights, at the review's lr; then the 749 held-out relation
questions of relation_errors.py, split by pair, and the recipe's text QA on 1,200 questions. The LM is saved (bf16). It was run on the recipe-13 LM (benchmarks/README.md).
Usage: python benchmarks/experiments/relation_trial.py THREADS OUT_DIR STEPS [LINE=0.5] [MIX=0.3] [LR=5e-4]
"""
import functools, json, random, sys, time
import torch
from transformers import AutoTokenizer, LlamaForCausalLM
from minillava.stage0 import (FOCUS_KINDS, Stage0Config, fit_lm, in_cell_words, recipe_scenes, relation_sample,
                              text_qa_accuracy)
from minillava.stage0.vocab import cell_words_sample
from relation_errors import relation_accuracy, relation_rows

torch.set_num_threads(int(sys.argv[1])); out, steps = sys.argv[2], int(sys.argv[3])
line, mix, lr = (float(a) for a in (sys.argv[4:] + ["0.5", "0.3", "5e-4"][len(sys.argv[4:]):])[:3])
cfg = Stage0Config()
scenes, held = recipe_scenes(cfg)
tok = AutoTokenizer.from_pretrained("minillava/assets/tiny/lm")
lm = LlamaForCausalLM.from_pretrained("minillava/assets/tiny/lm", dtype=torch.float32)
rows = relation_rows(held)
inw = functools.partial(in_cell_words, where=True)


def measure(tag):
    split, overall, wrong = relation_accuracy(lm, tok, rows)
    qa = text_qa_accuracy(lm, tok, held, 1200, inw)
    print(json.dumps({"tag": tag, "relation_749": overall, "split": split, "wrong": wrong.most_common(4),
                      "text_qa": {k: v["accuracy"] for k, v in qa.items()}}), flush=True)


busy = [(r, lay) for r, lay, _ in scenes if len(lay) >= 2]


def draw(rng):
    if rng.random() < mix:
        record, layout = rng.choice(scenes)[:2]
        return cell_words_sample(record, layout, rng, True, FOCUS_KINDS + ("color",))
    return relation_sample(busy, rng, line=line, worked=False)  # the relations answered plainly


measure("shipped")
t = time.time()
lm.to(torch.bfloat16).to(torch.float32)
torch.manual_seed(cfg.seed + 13)
fit_lm(lm, tok, draw, random.Random(cfg.seed + 13), steps=steps, batch=32, lr=lr, warmup=0.05,
       max_length=cfg.max_length, desc="relation trial", share_prefix=True,
       report=lambda step, loss: step % 100 == 0 and print(json.dumps({"step": step, "loss": round(loss, 4)}), flush=True))
print("seconds", round(time.time() - t), flush=True)
measure(f"relation trial steps={steps} line={line} mix={mix} lr={lr}")
lm.to(torch.bfloat16).save_pretrained(out)
