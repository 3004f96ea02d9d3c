"""Relations in text answered the worked way (both cells named, then the relation: `relation_answer(worked=True)`),
on the shipped chat LM: the worked-relations phase (`stage0.relations_chat_lm`: a share REL of dialogues asks one or
two relation questions about a training scene in cell words, the rest are phase-3 dialogues with worked relation
answers), STEPS steps at lr LR from the bf16 weights. Then the 749 held-out relation questions of relation_errors.py
(judged by what the answer concludes, up to 48 new tokens) and the recipe's text QA on 1,200 questions; the LM is saved
(bf16). Run on the recipe-13 LM with 1000 0.5 5e-4 it made the shipped recipe-14 LM (bit for bit; benchmarks/README.md,
"Worked relations"); run now, it continues that LM.
Usage: PYTHONPATH=benchmarks/experiments python benchmarks/experiments/worked_relation_text.py THREADS OUT_DIR STEPS
[REL=0.5] [LR=5e-4]
"""
import dataclasses, functools, json, sys, time
import torch
from transformers import AutoTokenizer, LlamaForCausalLM
from minillava.stage0 import Stage0Config, in_cell_words, recipe_scenes, relations_chat_lm, text_qa_accuracy
from relation_errors import relation_accuracy, relation_rows

torch.set_num_threads(int(sys.argv[1])); out, steps = sys.argv[2], int(sys.argv[3])
rel, lr = (float(a) for a in (sys.argv[4:] + ["0.5", "5e-4"][len(sys.argv[4:]):])[:2])
cfg = dataclasses.replace(Stage0Config(), lm_relations_steps=steps, lm_relations_share=rel, lm_relations_lr=lr)
scenes, held = recipe_scenes(cfg)
tok = AutoTokenizer.from_pretrained("minillava/assets/tiny/lm")
lm = LlamaForCausalLM.from_pretrained("minillava/assets/tiny/lm", dtype=torch.float32)
rows = relation_rows(held)


def measure(tag):
    split, overall, wrong = relation_accuracy(lm, tok, rows, max_new_tokens=48)
    qa = text_qa_accuracy(lm, tok, held, 1200, functools.partial(in_cell_words, where=True))
    print(json.dumps({"tag": tag, "relation_749": overall, "split": split, "wrong": wrong.most_common(4),
                      "text_qa": {k: v["accuracy"] for k, v in qa.items()}}), flush=True)


measure("shipped")
t = time.time()
relations_chat_lm(cfg, lm, scenes, tok, log=lambda line: print(line, flush=True))
print("seconds", round(time.time() - t), flush=True)
measure(f"worked relations steps={steps} rel={rel} lr={lr}")
lm.to(torch.bfloat16).save_pretrained(out)
tok.save_pretrained(out)
