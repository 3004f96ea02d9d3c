"""The review (stage0.review) tried on a saved chat LM: text-only QA before and after, as in benchmarks/README.md.

Usage: [LM=DIR] python benchmarks/experiments/review_trial.py THREADS OUT_DIR [Stage0Config field=value ...]
(``baseline=1``: measure LM only). Text QA on 1,200 held-out questions in cell words (the recipe's check with twice
the questions), and "What is at the {position}?" asked of one occupied and one empty cell of each held-out scene;
the reviewed LM is saved (bf16) in OUT_DIR. It measured the review after binding on the recipe-12 LM (``LM=DIR``: a
copy of that LM; the shipped LM is recipe 13's, which is that review, ``stage0.add_lm_phase``).
"""
import dataclasses, functools, json, random, sys, time
import torch
from transformers import AutoTokenizer, LlamaForCausalLM
from minillava.stage0.recipe import Stage0Config, recipe_scenes
from minillava.stage0.review import review_chat_lm
from minillava.stage0.lm import text_qa_accuracy
from minillava.stage0.vocab import in_cell_words
from minillava.data.teachers import what_is_at, object_at, answer_is_correct
from minillava.data.grid import POSITIONS
from minillava.conversation import get_template, prompt_ids
from minillava.data.dataset import left_pad
from minillava.eval.accuracy import answer_habits

torch.set_num_threads(int(sys.argv[1])); out = sys.argv[2]; over = dict(a.split("=") for a in sys.argv[3:])
base = over.pop("baseline", None)
cfg = Stage0Config()
cfg = dataclasses.replace(cfg, **{k: type(getattr(cfg, k))(v) for k, v in over.items()})
scenes, held = recipe_scenes(cfg)
tok = AutoTokenizer.from_pretrained("minillava/assets/tiny/lm")
lm = LlamaForCausalLM.from_pretrained(__import__("os").environ.get("LM", "minillava/assets/tiny/lm"), dtype=torch.float32)
inw = functools.partial(in_cell_words, where=True)

@torch.no_grad()
def what_at(lm):
    t = get_template("vicuna_v1"); lm.eval(); res = {"occupied": [0, 0], "empty": [0, 0]}
    rows = []
    for rec, lay, _ in held:
        rng = random.Random(rec.image_id)
        occ = [p for p in POSITIONS if object_at(rec, p) is not None]; emp = [p for p in POSITIONS if p not in occ]
        rows.append((rec, lay, what_is_at(rec, rng.choice(occ)), "occupied"))
        if emp: rows.append((rec, lay, what_is_at(rec, rng.choice(emp)), "empty"))
    for i in range(0, len(rows), 64):
        ch = rows[i:i+64]
        ids, mask = left_pad([prompt_ids(f"{inw(r, l)}\n{qa.question}", tok, t, image_tokens=1) for r, l, qa, _ in ch], tok.pad_token_id)
        o = lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        for (r, l, qa, k), seq in zip(ch, o[:, ids.shape[1]:]):
            res[k][0] += answer_is_correct(qa, tok.decode(seq, skip_special_tokens=True)); res[k][1] += 1
    lm.train()
    return {k: round(a / b, 3) for k, (a, b) in res.items()}

def measure(lm, tag):
    answers = []
    qa = text_qa_accuracy(lm, tok, held, 1200, inw, answers=answers)
    hab = answer_habits(answers)
    row = {"tag": tag, "text_qa": {k: v["accuracy"] for k, v in qa.items()}, "n": {k: v["n"] for k, v in qa.items()},
           "what_at": what_at(lm), "habits": [f for f, h in hab.items() if h["habit"]]}
    print(json.dumps(row), flush=True)
    return row

t = time.time()
if base:
    measure(lm, "shipped"); sys.exit()
if not cfg.lm_review_steps:
    sys.exit("set lm_review_steps=N (1500 is the shipped recipe's)")
lm = review_chat_lm(cfg, lm, scenes, tok, None, log=lambda s: print(s, flush=True))
print("seconds", round(time.time() - t), flush=True)
measure(lm, json.dumps(over))
lm.to(torch.bfloat16).save_pretrained(out)
