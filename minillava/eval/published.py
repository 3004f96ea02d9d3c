"""§5 the authors' LLaVA-Bench files as published, the reviews their judge script writes, and their summary.

The authors keep a benchmark in three JSON-lines files plus a folder of images (``docs/LLaVA_Bench.md``,
``scripts/v1_5/eval/llavabench.sh`` in haotian-liu/LLaVA)::

                   LLaVA-Bench (COCO)                  LLaVA-Bench (In-the-Wild)    ours (minillava data bench)
    questions      qa90_questions.jsonl                questions.jsonl              questions.jsonl
    references     qa90_gpt4_answer.jsonl              answers_gpt4.jsonl           references.jsonl
    context        caps_boxes_coco2014_val_80.jsonl    context.jsonl                context.jsonl

Questions and answers rows are read by :mod:`.bench`. The context comes in three layouts, all keyed so that
each question finds its row:

- COCO, one row per *image*: ``{"id", "image", "captions": [str, ...], "instances": [{"category", "bbox"}]}``;
  the judge reads the captions, a blank line, and one ``category: [x1, y1, x2, y2]`` line per box, exactly as
  ``llava/eval/eval_gpt_review_visual.py`` builds its ``[Context]``;
- In-the-Wild, one row per *image*: ``{"id", "image", "caption": str}`` (a list of strings is joined by
  newlines, as ``llava/eval/eval_gpt_review_bench.py`` does);
- ours, one row per *question*: ``{"question_id", "context", "objects", ...}`` (see :mod:`.bench`).

A review row is what the authors' judge scripts append for each question::

    {"id": 1, "question_id": 0, "answer1_id": ..., "answer2_id": ..., "category": "llava_bench_conv",
     "content": "<the judge's reply: first line 'reference candidate' scores, then the reasons>",
     "tuple": [reference score, candidate score]}

``category`` is ``llava_bench_<category>`` for the In-the-Wild layout (as ``eval_gpt_review_bench.py`` writes)
and the bare category otherwise (as ``eval_gpt_review_visual.py`` writes for COCO). Answer 1 is the reference,
answer 2 the candidate, as in the paper. :func:`summarize_reviews` is ``llava/eval/summarize_gpt_review.py``'s
arithmetic: per category and over all rows, the mean of each score rounded to 3 places, then
``round(mean candidate / mean reference × 100, 1)``, and the two means × 10.
"""

from __future__ import annotations

from pathlib import Path

from ..data.records import DataError
from ..files import write_jsonl
from .bench import ID_TYPES, check_fields, read_context, read_rows

COCO_CONTEXT_FIELDS = {"image": str, "captions": list, "instances": list}
WILD_CONTEXT_FIELDS = {"image": str, "caption": (str, list)}


def context_layout(path: str | Path) -> str:
    """``coco``, ``wild`` or ``ours``, from the first row's fields (every row is then checked for that layout)."""
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path}: no context rows")
    lineno, first = rows[0]
    if "captions" in first or "instances" in first:
        return "coco"
    if "caption" in first:
        return "wild"
    if "context" in first or "question_id" in first:
        return "ours"
    raise DataError(f"{path}: line {lineno}: a context row needs 'captions' + 'instances' (LLaVA-Bench COCO), "
                    f"'caption' (In-the-Wild) or 'question_id' + 'context' (minillava); found {sorted(first)}")


def _coco_context(path: Path, lineno: int, row: dict) -> str:
    check_fields(path, lineno, row, COCO_CONTEXT_FIELDS, {"id": ID_TYPES})
    for i, caption in enumerate(row["captions"]):
        if not isinstance(caption, str):
            raise DataError(f"{path}: line {lineno}: field 'captions' item {i} is not a string")
    boxes = []
    for i, inst in enumerate(row["instances"]):
        ok = (isinstance(inst, dict) and isinstance(inst.get("category"), str) and isinstance(inst.get("bbox"), list)
              and len(inst["bbox"]) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 for v in inst["bbox"]))
        if not ok:
            raise DataError(f"{path}: line {lineno}: field 'instances' item {i} is not "
                            "{\"category\": str, \"bbox\": [x1, y1, x2, y2]}")
        boxes.append(f"{inst['category']}: {inst['bbox']}")
    return "\n".join(row["captions"]) + "\n\n" + "\n".join(boxes)


def _wild_context(path: Path, lineno: int, row: dict) -> str:
    check_fields(path, lineno, row, WILD_CONTEXT_FIELDS, {"id": ID_TYPES})
    caption = row["caption"]
    if isinstance(caption, list):
        if not all(isinstance(c, str) for c in caption):
            raise DataError(f"{path}: line {lineno}: field 'caption' is a list with a non-string item")
        caption = "\n".join(caption)
    return caption


def read_bench_context(path: str | Path, questions: list[dict]) -> tuple[dict[str, dict], str]:
    """(context row per str(question_id), layout) for any of the three layouts.

    Rows of the authors' per-image layouts become ``{"question_id", "image", "context": the judge's text}``;
    a question whose image has no context row is a one-line DataError naming the question and image.
    """
    path = Path(path)
    layout = context_layout(path)
    if layout == "ours":
        return read_context(path), layout
    build = _coco_context if layout == "coco" else _wild_context
    by_image: dict[str, str] = {}
    for lineno, row in read_rows(path):
        text = build(path, lineno, row)
        if row["image"] in by_image:
            raise DataError(f"{path}: line {lineno}: field 'image' {row['image']!r} has a context row already")
        by_image[row["image"]] = text
    out = {}
    for q in questions:
        if q["image"] not in by_image:
            raise DataError(f"{path}: no context row for image {q['image']!r} (question_id {q['question_id']!r})")
        out[str(q["question_id"])] = {"question_id": q["question_id"], "image": q["image"],
                                      "context": by_image[q["image"]]}
    return out, layout


def review_rows(per_question: list[dict], layout: str) -> list[dict]:
    """Reviews in the authors' format from :func:`~minillava.eval.judges.evaluate_answers`' ``per_question``.

    A question whose verdict failed has no row (the authors' script writes ``[-1, -1]`` into the mean; we leave
    it out and list it in the result's ``failed``). With repeated judging, ``tuple`` is the mean over repeats.
    """
    prefix = "llava_bench_" if layout == "wild" else ""
    rows = []
    for q in per_question:
        if q["failed"]:
            continue
        ref, cand = q["score_reference"], q["score_candidate"]
        rows.append({"id": len(rows) + 1, "question_id": q["question_id"],
                     "answer1_id": q.get("reference_id", q["question_id"]),
                     "answer2_id": q.get("answer_id", q["question_id"]),
                     "category": prefix + q["category"],
                     "content": f"{ref:g} {cand:g}\n{q.get('explanation', '')}".rstrip(),
                     "tuple": [ref, cand]})
    return rows


def write_reviews(path: str | Path, rows: list[dict]) -> Path:
    return write_jsonl(path, rows)


def summarize_reviews(rows: list[dict]) -> dict[str, dict]:
    """``summarize_gpt_review.py``'s numbers: {category: {relative, reference, candidate, n}}, plus ``all``.

    As there, each category's scores are averaged and rounded to 3 places, the relative score is
    ``round(candidate / reference * 100, 1)``, and reference and candidate are reported as mean × 10 (1 place).
    """
    groups: dict[str, list] = {}
    for row in rows:
        groups.setdefault(row["category"], []).append(row["tuple"])
        groups.setdefault("all", []).append(row["tuple"])
    out = {}
    for key in sorted(groups):
        pairs = groups[key]
        ref = round(sum(p[0] for p in pairs) / len(pairs), 3)
        cand = round(sum(p[1] for p in pairs) / len(pairs), 3)
        out[key] = {"relative": round(cand / ref * 100, 1) if ref else None, "reference": round(ref * 10, 1),
                    "candidate": round(cand * 10, 1), "n": len(pairs)}
    return out


def format_summary(summary: dict[str, dict], title: str) -> str:
    """The summary as a markdown table (the authors print ``category relative reference×10 candidate×10``)."""
    lines = [f"{title}", "", "| category | relative score | reference (mean × 10) | candidate (mean × 10) | n |",
             "|---|---|---|---|---|"]
    for key, s in summary.items():
        rel = "–" if s["relative"] is None else f"{s['relative']:.1f}"
        lines.append(f"| {key} | {rel} | {s['reference']:.1f} | {s['candidate']:.1f} | {s['n']} |")
    return "\n".join(lines)
