"""LLaVA-format instruction data: read, validate, write, summarise.

The de-facto format of every LLaVA-style trainer (the authors' LLaVA-Instruct-158K files, §3)::

    [{"id": "...", "image": "file.png",
      "conversations": [{"from": "human", "value": "<image>\\nQ1"}, {"from": "gpt", "value": "A1"},
                        {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}, ...]}]

Turns alternate human / gpt, starting with human; the first human turn carries exactly one ``<image>``.
Samples may carry an extra ``"type"`` (``conv`` / ``detail`` / ``complex``) so the ablations can select
by response type; trainers that do not know it ignore it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ..conversation import IMAGE_TOKEN
from ..files import DataError, read_jsonl, read_utf8, write_json

RESPONSE_TYPES = ("conv", "detail", "complex")


def make_sample(sample_id: str, image: str, turns: list[tuple[str, str]], response_type: str | None = None) -> dict:
    """Build one sample from (question, answer) pairs; the image placeholder goes first, as the authors' code does."""
    conversations = []
    for i, (question, answer) in enumerate(turns):
        value = f"{IMAGE_TOKEN}\n{question}" if i == 0 else question
        conversations += [{"from": "human", "value": value}, {"from": "gpt", "value": answer}]
    sample = {"id": sample_id, "image": image, "conversations": conversations}
    if response_type is not None:
        sample["type"] = response_type
    return sample


def validate_sample(sample: object, where: str) -> None:
    """Raise a one-line DataError naming ``where`` (file and record) and the bad field."""
    if not isinstance(sample, dict):
        raise DataError(f"{where}: sample is not an object")
    sid = sample.get("id")
    tag = f"{where} (id={sid})"
    if not isinstance(sid, (str, int)) or isinstance(sid, bool):
        raise DataError(f"{where}: field 'id' is missing or not a string")
    if "image" in sample and not isinstance(sample["image"], str):
        raise DataError(f"{tag}: field 'image' is not a string")
    turns = sample.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{tag}: field 'conversations' is missing or empty")
    for i, turn in enumerate(turns):
        expected = "human" if i % 2 == 0 else "gpt"
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise DataError(f"{tag}: conversations[{i}] has no string 'value'")
        if turn.get("from") != expected:
            raise DataError(f"{tag}: conversations[{i}] field 'from' is {turn.get('from')!r}, expected {expected!r}")
        if expected == "gpt" and not turn["value"].strip():
            raise DataError(f"{tag}: conversations[{i}] field 'value' is an empty answer")
    if len(turns) % 2:
        raise DataError(f"{tag}: conversations ends with a human turn that has no answer")
    n_image = sum(t["value"].count(IMAGE_TOKEN) for t in turns)
    if "image" in sample and (n_image != 1 or IMAGE_TOKEN not in turns[0]["value"]):
        raise DataError(f"{tag}: expected exactly one {IMAGE_TOKEN} in the first human turn, found {n_image} "
                        f"in the conversation")
    if "image" not in sample and n_image:
        raise DataError(f"{tag}: has {IMAGE_TOKEN} but no field 'image'")


def read_samples(path: str | Path) -> list:
    """The samples of a LLaVA JSON file (one list) or ``.jsonl`` file (one sample per line), not yet validated."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return [sample for _, sample in read_jsonl(path)]
    try:
        samples = json.loads(read_utf8(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(samples, list):
        raise DataError(f"{path}: expected a JSON list of samples, got {type(samples).__name__}")
    return samples


def read_llava_json(path: str | Path, *, skip_bad: bool = False, skipped: list[str] | None = None) -> list[dict]:
    """Load and validate a LLaVA JSON file (a list of samples). ``.jsonl`` (one sample per line) also works."""
    samples = read_samples(path)
    kept = []
    for i, sample in enumerate(samples):
        try:
            validate_sample(sample, f"{path}: record {i}")
        except DataError as e:
            if not skip_bad:
                raise
            if skipped is not None:
                skipped.append(str(e))
            continue
        kept.append(sample)
    return kept


def write_llava_json(path: str | Path, samples: list[dict]) -> Path:
    """Write samples as one JSON list, atomically."""
    return write_json(path, samples, indent=1, ensure_ascii=False)


def dataset_stats(samples: list[dict]) -> dict:
    """Counts per response type, turns per sample and answer lengths (in words)."""
    types = Counter(s.get("type", "unknown") for s in samples)
    turns = [len(s["conversations"]) // 2 for s in samples]
    answer_words = [len(t["value"].split()) for s in samples for t in s["conversations"] if t["from"] == "gpt"]
    question_words = [len(t["value"].replace(IMAGE_TOKEN, "").split())
                      for s in samples for t in s["conversations"] if t["from"] == "human"]

    def summary(xs: list[int]) -> dict:
        if not xs:
            return {"min": 0, "mean": 0.0, "max": 0}
        return {"min": min(xs), "mean": round(sum(xs) / len(xs), 2), "max": max(xs)}

    return {"samples": len(samples), "images": len({s.get("image") for s in samples}),
            "per_type": dict(sorted(types.items())), "turns_per_sample": summary(turns),
            "question_words": summary(question_words), "answer_words": summary(answer_words)}
