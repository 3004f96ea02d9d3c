"""Relations in text answered the worked way (both cells named, then the relation: `relation_answer(worked=True)`)
on the shipped chat LM: a share REL of dialogues asks one or two relation questions about a training scene in cell
words (a pair in one row or column with chance 0.5, where the scene has one), the rest are phase-3 dialogues whose
relation answers are worked too; from the bf16 weights. Then the 749 held-out relation questions of
relation_errors.py (the answer judged by its conclusion, up to 48 tokens) and the recipe's text QA on 1,200 questions.
The LM is saved (bf16). Shipped as recipe 14's last phase (``stage0/relations.py``, the same draws: run on the recipe-13
LM it gives these weights bit for bit); run now, it continues the recipe-14 LM. Usage: python benchmarks/experiments/worked_relation_text.py THREADS OUT_DIR STEPS [REL=0.5]
[LR=5e-4]
"""
import functools, json, random, sys, time
import torch
from transformers import AutoTokenizer, LlamaForCausalLM
import minillava.stage0.lm as lm_module
from minillava.conversation import IMAGE_TOKEN
from minillava.data.llava_json import make_sample
from minillava.data.teachers import scene_questions
from minillava.stage0 import FOCUS_KINDS, Stage0Config, fit_lm, in_cell_words, recipe_scenes, text_qa_accuracy
from minillava.stage0.vocab import cell_words_sample, scene_in_cell_words
from relation_errors import relation_accuracy, relation_rows

torch.set_num_threads(int(sys.argv[1])); out, steps = sys.argv[2], int(sys.argv[3])
rel, lr = (float(a) for a in (sys.argv[4:] + ["0.5", "5e-4"][len(sys.argv[4:]):])[:2])
cfg = Stage0Config()
scenes, held = recipe_scenes(cfg)
tok = AutoTokenizer.from_pretrained("minillava/assets/tiny/lm")
lm = LlamaForCausalLM.from_pretrained("minillava/assets/tiny/lm", dtype=torch.float32)
rows = relation_rows(held)
inw = functools.partial(in_cell_words, where=True)


def measure(tag):
    split, overall, wrong = relation_accuracy(lm, tok, rows, max_new_tokens=48)
    qa = text_qa_accuracy(lm, tok, held, 1200, inw, max_new_tokens=48)
    print(json.dumps({"tag": tag, "relation_749": overall, "split": split, "wrong": wrong.most_common(4),
                      "text_qa": {k: v["accuracy"] for k, v in qa.items()}}), flush=True)


def relations(record, rng):
    qs = {}  # the worked teacher's relation questions of four draws, by kind of pair
    for _ in range(4):
        for qa in scene_questions(record, random.Random(rng.random()), worked=True):
            if qa.kind == "relation":
                qs.setdefault("diag" if " and " in qa.key else "line", []).append(qa)
    return qs


busy = [(r, lay) for r, lay, _ in scenes if len(lay) >= 2]


def draw(rng):
    if rng.random() >= rel:
        record, layout = rng.choice(scenes)[:2]
        return cell_words_sample(record, layout, rng, True, FOCUS_KINDS + ("color",))
    while True:
        record, layout = rng.choice(busy)
        qs = relations(record, rng)
        if qs:
            break
    turns = []
    for _ in range(rng.randint(1, 2)):
        qa = rng.choice(qs.get("line" if rng.random() < 0.5 else "diag") or next(iter(qs.values())))
        if qa.question not in {q for q, _ in turns}:
            turns.append((qa.question, qa.answer))
    sample = make_sample(f"relation_{record.image_id}", record.file_name, turns)
    sample["conversations"][0]["value"] = sample["conversations"][0]["value"].replace(
        IMAGE_TOKEN, scene_in_cell_words(layout, True))
    return sample


measure("shipped")
t = time.time()
lm.to(torch.bfloat16).to(torch.float32)
torch.manual_seed(cfg.seed + 13)
plain = lm_module.scene_questions
lm_module.scene_questions = functools.partial(plain, worked=True)  # the mix's relation answers are worked too
fit_lm(lm, tok, draw, random.Random(cfg.seed + 13), steps=steps, batch=32, lr=lr, warmup=0.05,
       max_length=cfg.max_length, desc="worked relations", share_prefix=True,
       report=lambda step, loss: step % 100 == 0 and print(json.dumps({"step": step, "loss": round(loss, 4)}), flush=True))
lm_module.scene_questions = plain
print("seconds", round(time.time() - t), flush=True)
measure(f"worked relations steps={steps} rel={rel} lr={lr}")
lm.to(torch.bfloat16).save_pretrained(out)
tok.save_pretrained(out)
