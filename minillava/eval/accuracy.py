"""Exact-match accuracy on held-out scenes, per question kind, with the baselines that keep it honest.

The embedded scenes have exact ground truth, so every conversation question has a short key answer
(``teachers.QA.key``). A model "knows" colour only if it beats both
- the same model shown a *blank* image (what the language prior alone gets right), and
- the majority answer of each kind;
and it must do so on multi-object scenes too, where naming *a* colour in the picture is not enough.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from pathlib import Path

import torch

from ..data.dataset import compute_features
from ..data.records import ImageRecord
from ..data.grid import POSITIONS
from ..data.shapes import COLORS, SHAPES
from ..data.teachers import QA, answer_is_correct, scene_questions, stated_answer
from ..data.words import plural
from ..inference import answer_batch


def heldout_questions(records: list[ImageRecord], per_image: int = 3, seed: int = 1234) -> list[tuple[ImageRecord, QA]]:
    """A fixed set of (scene, question) pairs, drawn with a seed that training never uses."""
    rows = []
    for record in records:
        qas = scene_questions(record, random.Random(f"eval:{seed}:{record.image_id}"))
        rows += [(record, qa) for qa in qas[:per_image]]
    return rows


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k / n."""
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(max(0.0, centre - half), 3), round(min(1.0, centre + half), 3))


def learned_kinds(per_kind: dict[str, dict], blank_accuracy: dict[str, float]) -> list[str]:
    """The question kinds answered by looking — the one definition of "learned" every notebook uses.

    A kind is learned when the lower end of its 95% interval clears both the upper end of the same model's interval
    with a blank image (what the question and the language prior alone get right) and the majority answer (the
    best constant guess). ``per_kind`` rows hold ``ci95``, ``n`` and ``majority`` (as ``evaluate_exact`` returns).
    """
    learned = []
    for kind, row in per_kind.items():
        if kind == "all":
            continue
        blank = blank_accuracy[kind]
        blank_upper = wilson(round(blank * row["n"]), row["n"])[1]
        if row["ci95"][0] > max(blank_upper, row["majority"]):
            learned.append(kind)
    return learned


@torch.no_grad()
def evaluate_exact(model, processor, rows: list[tuple[ImageRecord, QA]], image_root: str | Path, *,
                   blank_image: bool = False, batch_size: int = 64, progress: bool = False) -> dict:
    """Accuracy per kind (all scenes, and multi-object scenes only) with 95% intervals; also each answer."""
    names = sorted({r.file_name for r, _ in rows})
    if blank_image:  # one plain background image stands in for every scene
        from PIL import Image
        size = rows[0][0].width
        pixels = processor(images=[Image.new("RGB", (size, size), (238, 238, 238))], return_tensors="pt")["pixel_values"]
        feats = model.image_features(pixels.to(next(model.parameters()).device)).float().cpu()
        features = {n: feats[0] for n in names}
    else:
        feats = compute_features(model, Path(image_root) / "images", names, processor, progress=progress,
                                 device=str(next(model.parameters()).device))
        features = dict(zip(names, feats))
    hits: dict[str, list[bool]] = defaultdict(list)
    multi: dict[str, list[bool]] = defaultdict(list)
    answers = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        texts = answer_batch(model, [qa.question for _, qa in chunk],
                             image_features=torch.stack([features[r.file_name] for r, _ in chunk]),
                             max_new_tokens=64)  # a worked answer lists up to four objects first (≤ 57 tokens)
        for (record, qa), text in zip(chunk, texts):
            ok = answer_is_correct(qa, text)
            hits[qa.kind].append(ok)
            if len(record.objects) > 1:
                multi[qa.kind].append(ok)
            answers.append({"image": record.file_name, "question": qa.question, "kind": qa.kind, "key": qa.key,
                            "answer": text, "stated": stated_answer(qa.kind, text), "correct": ok})
    result = {}
    for kind in sorted(hits):
        k, n = sum(hits[kind]), len(hits[kind])
        km, nm = sum(multi[kind]), len(multi[kind])
        keys = Counter(qa.key for _, qa in rows if qa.kind == kind)
        result[kind] = {"accuracy": round(k / n, 3), "ci95": wilson(k, n), "n": n,
                        "multi_object": round(km / nm, 3) if nm else None, "n_multi": nm,
                        "majority": round(keys.most_common(1)[0][1] / n, 3)}
    all_hits = [h for v in hits.values() for h in v]
    result["all"] = {"accuracy": round(sum(all_hits) / len(all_hits), 3), "ci95": wilson(sum(all_hits), len(all_hits)),
                     "n": len(all_hits)}
    return {"per_kind": result, "answers": answers}


def question_form(question: str) -> str:
    """The question with its scene words replaced by slots: 'Is there a {color} {shape} in the image?'."""
    for phrase in sorted(POSITIONS, key=len, reverse=True):  # "bottom center" before "center"
        question = question.replace(f" {phrase}", " {position}")
    shapes = set(SHAPES) | {plural(s) for s in SHAPES}
    words = []
    for word in question.split(" "):
        bare, end = word.rstrip("?"), word[len(word.rstrip("?")):]
        words.append(("{color}" if bare in COLORS else "{shape}" if bare in shapes else bare) + end)
    return " ".join(words).replace("an {color}", "a {color}")


HABIT_SHARE = 0.9  # one answer to at least this share of a form's questions, while the keys vary, is a habit


def answer_habits(answers: list[dict]) -> dict[str, dict]:
    """Per question form: accuracy, the commonest key and the commonest answer given, each with its share, and
    the accuracy on each key. ``habit`` marks a form whose questions get one answer ≥ 90% of the time although
    no key is that common: the model has learned what such an answer looks like, not to read it off the image.

    A kind's accuracy can hide one: 'What is at the {position}?' is mostly asked of empty cells, so always
    answering 'nothing' scores well there while never naming a shape that *is* there.
    """
    forms: dict[str, list[dict]] = defaultdict(list)
    for a in answers:
        forms[f"{a['kind']}: {question_form(a['question'])}"].append(a)
    result = {}
    for form, rows in sorted(forms.items()):
        n = len(rows)
        key, key_n = Counter(a["key"] for a in rows).most_common(1)[0]
        said, said_n = Counter(a["stated"] for a in rows).most_common(1)[0]
        by_key = defaultdict(list)
        for a in rows:
            by_key[a["key"]].append(a["correct"])
        result[form] = {"n": n, "accuracy": round(sum(a["correct"] for a in rows) / n, 3),
                        "commonest_key": [key, round(key_n / n, 3)], "commonest_answer": [said, round(said_n / n, 3)],
                        "accuracy_by_key": {k: round(sum(v) / len(v), 3) for k, v in sorted(by_key.items())},
                        "habit": said_n / n >= HABIT_SHARE and key_n / n < HABIT_SHARE and len(by_key) > 1}
    return result


def habits_table(habits: dict[str, dict]) -> list[str]:
    """``answer_habits`` as markdown table lines: one row per question form, habits marked."""
    lines = ["| question form | n | accuracy | commonest key | commonest answer | worst key |", "|---|---|---|---|---|---|"]
    for form, h in habits.items():
        (key, key_share), (said, said_share) = h["commonest_key"], h["commonest_answer"]
        worst = min(h["accuracy_by_key"].items(), key=lambda kv: kv[1])
        lines.append(f"| {form} | {h['n']} | {h['accuracy']:.3f} | {key} ({key_share:.2f}) | {said or '—'} "
                     f"({said_share:.2f}){' **habit**' if h['habit'] else ''} | {worst[0]} ({worst[1]:.2f}) |")
    return lines
