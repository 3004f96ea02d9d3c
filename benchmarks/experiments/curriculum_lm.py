"""The no-prefix curriculum on the real chat LM: lookups first without the system prompt, then the full template.

A fresh chat LM in the shipped shape, its cell-word rows started as ``stage0.add_cell_words`` starts them; phase A:
dialogues of two definite-answer questions about a scene in cell words, in the Vicuna template with an *empty*
system prompt, batch 48, lr 1e-3; phase B: the cell-word phase's mix (colour drill included) with the prompt,
batch 32, lr 1e-3. Text-only QA (600 held-out questions, full template) every 250 / 100 steps; the LM is saved to
``OUT`` for ``benchmarks/lm_lookup.py --lm OUT``.

    python benchmarks/experiments/curriculum_lm.py 1500 500 [OUT]
"""
import dataclasses, functools, json, random, sys, time, torch
torch.set_num_threads(2)
from transformers import LlamaForCausalLM
from minillava.model.backbones import load_lm, tiny_lm_config
from minillava.stage0 import Stage0Config, recipe_scenes, in_cell_words, text_qa_accuracy, fit_lm, FOCUS_KINDS
from minillava.stage0.vocab import cell_words_sample, _what_and_cell, cell_word, EMPTY_CELL, scene_in_cell_words
from minillava.data.grid import POSITIONS
from minillava.data.teachers import scene_questions
from minillava.data.llava_json import make_sample
from minillava.conversation import get_template
steps_a, steps_b = int(sys.argv[1]), int(sys.argv[2])
_, tok = load_lm("tiny")
torch.manual_seed(0)
lm = LlamaForCausalLM(tiny_lm_config(len(tok), tok))
def mean(text, table):
    return table[tok(" " + text, add_special_tokens=False)["input_ids"]].mean(0)
with torch.no_grad():
    for table in (lm.get_input_embeddings().weight, lm.get_output_embeddings().weight):
        for what, cell in _what_and_cell(True):
            s = mean(what[1:-1].replace("-", " ") if what != EMPTY_CELL else "nothing", table) + mean(POSITIONS[cell], table)
            table[tok.convert_tokens_to_ids(cell_word(what, cell, True))] = s
train, held = recipe_scenes(Stage0Config())
words = functools.partial(in_cell_words, where=True)
short = dataclasses.replace(get_template("vicuna_v1"), system="")
t0 = time.time(); phase = ["A"]
def report_every(n, offset=0):
    def report(step, loss):
        if step % 100 == 0:
            print(json.dumps({"phase": phase[0], "step": step, "s": round(time.time() - t0), "loss": round(loss, 3)}), flush=True)
        if (step + 1) % n == 0:
            qa = text_qa_accuracy(lm, tok, held, 600, words)
            print(json.dumps({"phase": phase[0], "step": step + 1, "s": round(time.time() - t0), "qa": {k: v["accuracy"] for k, v in qa.items()}}), flush=True)
    return report
def lookups(rng):
    record, layout = rng.choice(train)[:2]
    qas = scene_questions(record, rng)[:2]
    s = make_sample("l", record.file_name, [(q.question, q.answer) for q in qas])
    s["conversations"][0]["value"] = s["conversations"][0]["value"].replace("<image>", scene_in_cell_words(layout, True))
    return {**s, "template": short}
fit_lm(lm, tok, lookups, random.Random(7), steps=steps_a, batch=48, lr=1e-3, warmup=0.05, max_length=256, desc="A",
       report=report_every(250), share_prefix=True)
phase[0] = "B"
kinds = FOCUS_KINDS + ("color",)
fit_lm(lm, tok, lambda rng: cell_words_sample(*rng.choice(train)[:2], rng, True, kinds), random.Random(8), steps=steps_b,
       batch=32, lr=1e-3, warmup=0.05, max_length=256, desc="B", report=report_every(100), share_prefix=True)
out = sys.argv[3] if len(sys.argv) > 3 else "runs/curriculum_lm"
lm.save_pretrained(out)
tok.save_pretrained(out)
