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
from ..data.teachers import QA, answer_is_correct, scene_questions
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
                             max_new_tokens=32)
        for (record, qa), text in zip(chunk, texts):
            ok = answer_is_correct(qa, text)
            hits[qa.kind].append(ok)
            if len(record.objects) > 1:
                multi[qa.kind].append(ok)
            answers.append({"image": record.file_name, "question": qa.question, "kind": qa.kind, "key": qa.key,
                            "answer": text, "correct": ok})
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
