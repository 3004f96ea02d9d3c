"""The published LLaVA-Instruct data (§3) on a local COCO subset: keep what we have images for, check the rest.

LLaVA-Instruct-150K (and -80K, and the three files it merges: conversation_58k, detail_23k,
complex_reasoning_77k) is one JSON list in the LLaVA format of ``llava_json.py``::

    {"id": "000000215677", "image": "000000215677.jpg",
     "conversations": [{"from": "human", "value": "What is in the photo?\\n<image>"}, {"from": "gpt", ...}, ...]}

The images are COCO train2017 pictures named by file. A subset made by ``minillava data coco`` holds only some of
them, so ``filter_llava_instruct`` keeps the samples whose image is in that subset and validates each one:
the structure check of ``llava_json.validate_sample`` and, given a tokenizer, the per-turn tokenisation check of
``conversation.tokenize_conversation`` (the loss mask of eq. 3 must line up with the tokens). Every dropped
sample is counted under one reason, so a report shows what was lost and why — never a silent drop.

As the authors' ``preprocess_multimodal`` does, the ``<image>`` placeholder (which the published file puts before or
after the first question) is moved to the front of the first human turn; the moved samples are counted.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ..conversation import IMAGE_TOKEN
from .llava_json import RESPONSE_TYPES, read_samples, validate_sample, write_llava_json
from .records import DataError, load_split

TINY_TOKENIZER = Path(__file__).resolve().parent.parent / "assets" / "tiny" / "lm"

# the reasons a sample is dropped, in the order they are checked
NOT_A_LIST_ITEM, NO_IMAGE, NOT_IN_SUBSET, INVALID, DUPLICATE, TOKENIZATION = (
    "not an object with an id", "no image (text-only sample)", "image not in the COCO subset",
    "invalid conversation", "duplicate (same image and conversation)", "tokenisation mismatch under the template")


def image_first(sample: dict) -> bool:
    """Move ``<image>`` to the front of the first human turn (in place); True if it moved."""
    first = sample["conversations"][0]
    value = first["value"]
    if value.startswith(IMAGE_TOKEN + "\n") or IMAGE_TOKEN not in value:
        return False
    first["value"] = f"{IMAGE_TOKEN}\n{value.replace(IMAGE_TOKEN, '').strip()}"
    return True


def load_tokenizer(name: str):
    """A tokenizer for the template check: ``tiny`` (shipped), a local directory or a hub id; ``<image>`` added."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TINY_TOKENIZER) if name == "tiny" else name)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tokenizer


def filter_llava_instruct(samples: list, file_names: set[str], *, source: str = "<samples>", tokenizer=None,
                          template: str = "vicuna_v1", response_type: str | None = None,
                          examples_per_reason: int = 3) -> tuple[list[dict], dict]:
    """(kept samples, report). ``file_names``: the images of the COCO subset (``ImageRecord.file_name``).

    A sample's ``image`` is matched by its base name, so ``coco/train2017/000000215677.jpg`` (the LLaVA-1.5 mix)
    matches too; kept samples name the subset's file, relative to ``DIR/images``.
    """
    from ..conversation import TokenizationMismatch, get_template, tokenize_conversation

    tmpl = get_template(template, tokenizer) if tokenizer is not None else None
    dropped: Counter = Counter()
    examples: dict[str, list[str]] = {}
    kept, seen, moved = [], set(), 0

    def drop(reason: str, message: str) -> None:
        dropped[reason] += 1
        if len(examples.setdefault(reason, [])) < examples_per_reason:
            examples[reason].append(message)

    for i, sample in enumerate(samples):
        where = f"{source}: record {i}"
        if not isinstance(sample, dict) or "id" not in sample:
            drop(NOT_A_LIST_ITEM, f"{where}: not an object with an 'id'")
            continue
        if not isinstance(sample.get("image"), str):
            drop(NO_IMAGE, f"{where} (id={sample['id']}): no 'image' field")
            continue
        name = Path(sample["image"]).name
        if name not in file_names:
            drop(NOT_IN_SUBSET, f"{where} (id={sample['id']}): {name}")
            continue
        try:
            validate_sample(sample, where)
        except DataError as e:
            drop(INVALID, str(e))
            continue
        # ids repeat legitimately (the 150K file has a conversation, a description and a reasoning sample per
        # image, all with the image's id); a duplicate is the same image with the same conversation
        key = (name, json.dumps(sample["conversations"], sort_keys=True))
        if key in seen:
            drop(DUPLICATE, f"{where} (id={sample['id']}): same image and conversation as an earlier sample")
            continue
        sample = {**sample, "image": name, "conversations": [dict(t) for t in sample["conversations"]]}
        moved += image_first(sample)
        if response_type is not None:
            sample["type"] = response_type
        if tokenizer is not None:
            try:  # image_tokens=1: only the alignment of text pieces matters here
                tokenize_conversation(sample, tokenizer, tmpl, image_tokens=1)
            except TokenizationMismatch as e:
                drop(TOKENIZATION, f"{where}: {e}")
                continue
        seen.add(key)
        kept.append(sample)
    report = {"source": source, "read": len(samples), "kept": len(kept), "dropped": sum(dropped.values()),
              "dropped_per_reason": dict(dropped.most_common()), "examples": examples,
              "image_moved_to_front": moved, "images_kept": len({s["image"] for s in kept}),
              "subset_images": len(file_names), "template_checked": template if tokenizer is not None else None}
    return kept, report


def prepare_llava_instruct(json_path: str | Path, coco_dir: str | Path, out: str | Path, *, split: str = "train2017",
                           tokenizer: str | None = None, template: str = "vicuna_v1",
                           response_type: str | None = None) -> dict:
    """Filter ``json_path`` to the images of ``coco_dir``'s ``split``, write the kept samples to ``out``; the report."""
    if response_type is not None and response_type not in RESPONSE_TYPES:
        raise DataError(f"--type: unknown response type {response_type!r}; expected one of {', '.join(RESPONSE_TYPES)}")
    records = load_split(coco_dir, split)
    samples = read_samples(json_path)
    kept, report = filter_llava_instruct(
        samples, {r.file_name for r in records}, source=str(json_path), template=template,
        tokenizer=load_tokenizer(tokenizer) if tokenizer else None, response_type=response_type)
    if not kept:
        raise DataError(f"{json_path}: no sample has its image in {coco_dir} split {split} "
                        f"({len(records)} images); dropped: {report['dropped_per_reason']}")
    write_llava_json(out, kept)
    report["out"] = str(out)
    return report


def format_report(report: dict) -> str:
    """Kept and dropped, one line per reason with a first example."""
    lines = [f"{report['source']}: read {report['read']}, kept {report['kept']} samples on {report['images_kept']} "
             f"of the subset's {report['subset_images']} images, dropped {report['dropped']}"]
    for reason, count in report["dropped_per_reason"].items():
        example = report["examples"].get(reason, [""])[0]
        lines.append(f"  dropped {count:>7}  {reason}" + (f"  (e.g. {example})" if example else ""))
    if report["image_moved_to_front"]:
        lines.append(f"  moved {IMAGE_TOKEN} to the front of the first question in {report['image_moved_to_front']} samples")
    if report.get("template_checked"):
        lines.append(f"  tokenisation checked under the {report['template_checked']} template")
    return "\n".join(lines)
