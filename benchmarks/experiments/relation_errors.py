"""Relations in text, by kind of pair: the chat LM's answers to "Where is the {A} relative to the {B}?" on held-out
scenes in cell words (up to four draws of the teacher per scene, 749 questions on the recipe's val scenes), split into
pairs in one row or column ("line") and diagonal pairs, with the commonest wrong answers.
Usage: python benchmarks/experiments/relation_errors.py LM_DIR [LM_DIR ...]
"""
import functools, random, sys, torch
from collections import Counter
from transformers import AutoTokenizer, LlamaForCausalLM
from minillava.stage0.recipe import Stage0Config, recipe_scenes
from minillava.stage0.vocab import in_cell_words
from minillava.data.teachers import scene_questions, answer_is_correct
from minillava.conversation import get_template, prompt_ids
from minillava.data.dataset import left_pad

inw = functools.partial(in_cell_words, where=True)


def relation_rows(held):
    """(record, layout, QA): up to four teacher draws of a relation question per held-out scene, no repeats."""
    rows = []
    for rec, lay, _ in held:
        for s in range(4):
            qs = [q for q in scene_questions(rec, random.Random(s)) if q.kind == "relation"]
            if qs and (rec, qs[0].question) not in [(r[0], r[2].question) for r in rows[-4:]]: rows.append((rec, lay, qs[0]))
    return rows


@torch.no_grad()
def relation_accuracy(lm, tok, rows, max_new_tokens=24):
    """({"line"|"diag": (accuracy, n)}, overall accuracy, Counter of (key, answer) for the wrong ones)."""
    t = get_template("vicuna_v1"); by = Counter(); n = Counter(); wrong = Counter()
    was_training = lm.training; lm.eval()
    for i in range(0, len(rows), 64):
        ch = rows[i:i+64]
        ids, mask = left_pad([prompt_ids(f"{inw(r, l)}\n{qa.question}", tok, t, image_tokens=1) for r, l, qa in ch], tok.pad_token_id)
        o = lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        for (r, l, qa), seq in zip(ch, o[:, ids.shape[1]:]):
            txt = tok.decode(seq, skip_special_tokens=True); ok = answer_is_correct(qa, txt)
            k = "diag" if " and " in qa.key else "line"
            by[k] += ok; n[k] += 1
            if not ok: wrong[(qa.key, txt.split(" is ")[-1][:30] if " is " in txt else txt[:30])] += 1
    lm.train(was_training)
    return {k: (round(by[k]/n[k], 3), n[k]) for k in n}, round(sum(by.values())/sum(n.values()), 3), wrong


if __name__ == "__main__":
    torch.set_num_threads(2)
    _, held = recipe_scenes(Stage0Config())
    tok = AutoTokenizer.from_pretrained("minillava/assets/tiny/lm")
    rows = relation_rows(held)
    print(len(rows))
    for path in sys.argv[1:]:
        lm = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        split, overall, wrong = relation_accuracy(lm, tok, rows)
        print(path, split, overall)
        print(wrong.most_common(8))
