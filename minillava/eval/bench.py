"""§5 LLaVA-Bench: the published jsonl format, an embedded benchmark built from held-out scenes, and answering it.

LLaVA-Bench (COCO) is 30 images × 3 question types = 90 questions (§3 and §5). Its files are JSON
lines, and this module reads and writes them exactly as published, so answers produced by any LLaVA-style
model (or by the authors' ``model_vqa.py``) can be scored here, and ours can be scored by their scripts::

    questions   {"question_id": 0, "image": "file.png", "text": "What ...?", "category": "conv"}
    answers     {"question_id": 0, "prompt": "What ...?", "text": "The ...", "answer_id": "...",
                 "model_id": "...", "metadata": {}}

``category`` is one of ``conv`` (a conversation question with a definite answer), ``detail`` (a "describe in
detail" prompt) or ``complex`` (a question that needs reasoning). Readers validate every row and fail with a
one-line :class:`~minillava.files.DataError` naming the file, the line and the field. Extra fields are
allowed, as in the published files.

The embedded benchmark (:func:`make_embedded_bench`) is built from *held-out* scenes: the caller passes the
test split, whose layouts never occur in training (see :mod:`minillava.data.shapes`). Next to
``questions.jsonl`` it writes

- ``references.jsonl``: the rule teacher's answer to every question (an answers file, ``model_id``
  ``"reference"``); it plays the part of the paper's text-only GPT-4 reference answers;
- ``context.jsonl``: per question, the §3 symbolic context (captions + boxes, what a text-only judge reads),
  the scene's objects with their attributes and grid positions, and for ``conv`` / ``complex`` the exact
  answer (``kind``, ``key``); the rule judge (:mod:`.judges`) scores from this ground truth.

Exact-match accuracy with 95% intervals on a larger set of short-answer questions is :mod:`.accuracy`.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections import Counter
from pathlib import Path

import torch

from ..data.context import symbolic_context
from ..data.prompts import DETAIL_PROMPTS
from ..data.records import ImageRecord
from ..data.teachers import QA, answer_is_correct, describe_scene, position, reasoning_question, scene_questions
from ..files import DataError, read_jsonl, write_jsonl

CATEGORIES = ("conv", "detail", "complex")
ID_TYPES = (int, str)
QUESTION_FIELDS = {"question_id": ID_TYPES, "image": str, "text": str, "category": str}
ANSWER_FIELDS = {"question_id": ID_TYPES, "text": str}
ANSWER_OPTIONAL = {"prompt": str, "answer_id": str, "model_id": str, "metadata": dict}
# the order in which conv questions cycle through kinds, so the 30 conv questions are not all counts
CONV_KIND_ORDER = ("count", "color", "position", "shape", "exists", "size", "relation")


# --- jsonl: read, validate, write --------------------------------------------------------------------------------

def read_rows(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a bad line is a one-line DataError."""
    rows = read_jsonl(path)
    for lineno, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {lineno}: expected a JSON object, got {type(row).__name__}")
    return rows


def check_fields(path: Path, lineno: int, row: dict, required: dict, optional: dict | None = None) -> None:
    for name, types in required.items():
        if name not in row:
            raise DataError(f"{path}: line {lineno}: missing field '{name}'")
    for name, types in {**required, **(optional or {})}.items():
        if name in row and (not isinstance(row[name], types) or isinstance(row[name], bool)):
            raise DataError(f"{path}: line {lineno}: field '{name}' has the wrong type ({type(row[name]).__name__})")


def _unique_ids(path: Path, rows: list[tuple[int, dict]]) -> None:
    seen: dict[str, int] = {}
    for lineno, row in rows:
        key = str(row["question_id"])
        if key in seen:
            raise DataError(f"{path}: line {lineno}: field 'question_id' {row['question_id']!r} "
                            f"repeats line {seen[key]}")
        seen[key] = lineno


def read_questions(path: str | Path) -> list[dict]:
    """Questions rows, validated: ``question_id``, ``image``, ``text``, ``category`` ∈ conv/detail/complex."""
    path = Path(path)
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path}: no questions")
    for lineno, row in rows:
        check_fields(path, lineno, row, QUESTION_FIELDS)
        if row["category"] not in CATEGORIES:
            raise DataError(f"{path}: line {lineno}: field 'category' is {row['category']!r}, "
                            f"expected one of {', '.join(CATEGORIES)}")
    _unique_ids(path, rows)
    return [row for _, row in rows]


def read_answers(path: str | Path) -> list[dict]:
    """Answers rows, validated: ``question_id`` and ``text`` required; ``prompt``, ``answer_id``, ``model_id``
    (strings) and ``metadata`` (an object) type-checked when present, so answers written elsewhere load too."""
    path = Path(path)
    rows = read_rows(path)
    for lineno, row in rows:
        check_fields(path, lineno, row, ANSWER_FIELDS, ANSWER_OPTIONAL)
    _unique_ids(path, rows)
    return [row for _, row in rows]


def read_context(path: str | Path) -> dict[str, dict]:
    """``context.jsonl`` as {str(question_id): row}; each row needs ``question_id`` and ``context`` (a string)."""
    path = Path(path)
    rows = read_rows(path)
    for lineno, row in rows:
        check_fields(path, lineno, row, {"question_id": ID_TYPES, "context": str},
                      {"objects": list, "kind": str, "key": str})
    _unique_ids(path, rows)
    return {str(row["question_id"]): row for _, row in rows}


def write_questions(path: str | Path, rows: list[dict]) -> Path:
    """Validate and write questions rows (field order as published; extra fields kept after them)."""
    ordered = []
    for i, row in enumerate(rows, 1):
        check_fields(Path(path), i, row, QUESTION_FIELDS)
        if row["category"] not in CATEGORIES:
            raise DataError(f"{path}: line {i}: field 'category' is {row['category']!r}, "
                            f"expected one of {', '.join(CATEGORIES)}")
        ordered.append({**{k: row[k] for k in QUESTION_FIELDS}, **row})
    _unique_ids(Path(path), list(enumerate(ordered, 1)))
    return write_jsonl(path, ordered)


def answer_id(model_id: str, question_id, text: str) -> str:
    """A stable 22-character id (the authors use a random shortuuid; a hash keeps reruns identical)."""
    return hashlib.sha1(json.dumps([model_id, question_id, text]).encode()).hexdigest()[:22]


def answer_row(question: dict, text: str, model_id: str, metadata: dict | None = None) -> dict:
    """One answers row, fields in the published order."""
    return {"question_id": question["question_id"], "prompt": question["text"], "text": text,
            "answer_id": answer_id(model_id, question["question_id"], text), "model_id": model_id,
            "metadata": metadata or {}}


def write_answers(path: str | Path, rows: list[dict]) -> Path:
    """Validate and write answers rows (missing ``answer_id`` / ``metadata`` are filled in)."""
    out = []
    for i, row in enumerate(rows, 1):
        check_fields(Path(path), i, row, {**ANSWER_FIELDS, "model_id": str}, ANSWER_OPTIONAL)
        full = {"question_id": row["question_id"], "prompt": row.get("prompt", ""), "text": row["text"],
                "answer_id": row.get("answer_id") or answer_id(row["model_id"], row["question_id"], row["text"]),
                "model_id": row["model_id"], "metadata": row.get("metadata", {})}
        out.append({**full, **{k: v for k, v in row.items() if k not in full}})
    _unique_ids(Path(path), list(enumerate(out, 1)))
    return write_jsonl(path, out)


# --- the embedded benchmark --------------------------------------------------------------------------------------

def scene_objects_context(record: ImageRecord) -> list[dict]:
    """The ground truth the rule judge needs: each object's category, colour, size and grid position."""
    return [{"category": o.category, "color": o.color, "size": o.size, "position": position(o, record)}
            for o in record.objects]


def _conv_question(record: ImageRecord, index: int, seed: int) -> QA:
    """One definite-answer question; image ``index`` prefers kind ``CONV_KIND_ORDER[index % 7]``."""
    qas = scene_questions(record, random.Random(f"bench:{seed}:{record.image_id}:conv"))
    wanted = CONV_KIND_ORDER[index % len(CONV_KIND_ORDER)]
    return next((qa for qa in qas if qa.kind == wanted), qas[0])


def make_embedded_bench(records: list[ImageRecord], out_dir: str | Path, n_images: int = 30, seed: int = 0, *,
                        image_root: str | Path | None = None) -> dict[str, Path]:
    """Write a LLaVA-Bench-shaped benchmark (``n_images`` × conv/detail/complex) from held-out ``records``.

    Images are drawn with ``seed`` and sorted by id; question ids run 0, 1, 2 (conv, detail, complex) for the
    first image, 3, 4, 5 for the second, and so on. With ``image_root`` (a dataset directory, or the folder of
    the pictures) the chosen images are copied to ``out_dir/images`` so the benchmark stands alone.
    Returns the paths written: ``questions``, ``references``, ``context`` (and ``images``).
    """
    if len(records) < n_images:
        raise ValueError(f"need at least {n_images} held-out scenes for the benchmark, got {len(records)}")
    chosen = sorted(random.Random(f"bench:{seed}").sample(list(records), n_images), key=lambda r: r.image_id)
    questions, references, contexts = [], [], []
    for i, record in enumerate(chosen):
        rng = random.Random(f"bench:{seed}:{record.image_id}")
        conv = _conv_question(record, i, seed)
        complex_qa = reasoning_question(record, rng)
        items = [("conv", conv.question, conv.answer, conv),
                 ("detail", rng.choice(DETAIL_PROMPTS), describe_scene(record), None),
                 ("complex", complex_qa.question, complex_qa.answer, complex_qa)]
        base = {"context": symbolic_context(record, with_boxes=True), "objects": scene_objects_context(record)}
        for j, (category, text, reference, qa) in enumerate(items):
            qid = 3 * i + j
            question = {"question_id": qid, "image": record.file_name, "text": text, "category": category}
            questions.append(question)
            references.append(answer_row(question, reference, "reference"))
            ctx = {"question_id": qid, "image": record.file_name, "category": category, **base}
            if qa is not None:
                ctx.update(kind=qa.kind, key=qa.key)
            contexts.append(ctx)
    out_dir = Path(out_dir)
    paths = {"questions": write_questions(out_dir / "questions.jsonl", questions),
             "references": write_answers(out_dir / "references.jsonl", references),
             "context": write_jsonl(out_dir / "context.jsonl", contexts)}
    if image_root is not None:
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
        for record in chosen:
            shutil.copyfile(resolve_image(image_root, record.file_name), out_dir / "images" / record.file_name)
        paths["images"] = out_dir / "images"
    return paths


def answer_matches(kind: str, key: str, question: str, text: str) -> bool:
    """Exact-match check of ``text`` against ``key`` (:func:`minillava.data.teachers.answer_is_correct`)."""
    return answer_is_correct(QA(question, "", kind, key), text)


# --- answering a benchmark ----------------------------------------------------------------------------------------

def resolve_image(image_root: str | Path, name: str) -> Path:
    """``image_root/name``, or ``image_root/images/name`` when ``image_root`` is a dataset directory."""
    root = Path(image_root)
    direct = root / name
    if not direct.is_file() and (root / "images" / name).is_file():
        return root / "images" / name
    return direct


@torch.no_grad()
def answer_bench(model, processor, questions: list[dict], image_root: str | Path, model_id: str, *,
                 batch_size: int = 16, max_new_tokens: int = 128, template: str = "vicuna_v1",
                 progress: bool = False) -> list[dict]:
    """Answer every question with ``model`` (greedy, batched) and return answers rows in question order.

    Image features are computed once per distinct image (the tower is frozen); questions are then answered
    ``batch_size`` at a time with :func:`minillava.inference.answer_batch`.
    """
    from ..data.dataset import features_of_files
    from ..inference import answer_batch

    names = list(dict.fromkeys(q["image"] for q in questions))
    features = dict(zip(names, features_of_files(model, processor, [resolve_image(image_root, n) for n in names],
                                                 batch_size=batch_size, device=next(model.parameters()).device)))
    rows = []
    starts = range(0, len(questions), batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="answering", unit="batch")
    for i in starts:
        chunk = questions[i:i + batch_size]
        texts = answer_batch(model, [q["text"] for q in chunk],
                             image_features=torch.stack([features[q["image"]] for q in chunk]),
                             template=template, max_new_tokens=max_new_tokens)
        rows += [answer_row(q, text, model_id) for q, text in zip(chunk, texts)]
    return rows


def category_counts(questions: list[dict]) -> dict[str, int]:
    return dict(Counter(q["category"] for q in questions))
