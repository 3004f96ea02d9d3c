"""`minillava data llava-instruct`: the published LLaVA-Instruct JSON kept to a local COCO subset, each drop counted."""

from __future__ import annotations

import json

import pytest

from minillava.cli import main
from minillava.data.llava_instruct import (DUPLICATE, INVALID, NO_IMAGE, NOT_IN_SUBSET, TOKENIZATION,
                                           filter_llava_instruct, load_tokenizer, prepare_llava_instruct)
from minillava.data.records import ImageRecord, ObjectRecord, write_split


def coco_name(image_id: int) -> str:
    return f"{image_id:012d}.jpg"


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    """A 3-image COCO train2017 subset with COCO's file names (000000000009.jpg ...)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("coco")
    (root / "images").mkdir()
    records = []
    for image_id in (9, 25, 30):
        Image.new("RGB", (32, 24), (image_id, 80, 160)).save(root / "images" / coco_name(image_id))
        records.append(ImageRecord(image_id, coco_name(image_id), 32, 24, [f"A picture number {image_id}."],
                                   [ObjectRecord("dog", (1.0, 2.0, 10.0, 8.0))]))
    write_split(root, "train2017", records, ["dog"], "test subset")
    return root


def turns(*texts: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]


def published_file() -> list:
    """Samples in the published format, with one of each kind of problem."""
    return [
        # kept: <image> after the question, as many published samples have it
        {"id": "000000000009", "image": coco_name(9),
         "conversations": turns("What is the dog doing?\n<image>", "It is sitting.", "Why?", "It is resting.")},
        # kept: same image and id, another response type (the 150K file repeats ids this way)
        {"id": "000000000009", "image": coco_name(9),
         "conversations": turns("<image>\nDescribe the image in detail.", "A dog sits on grass.")},
        # kept: the LLaVA-1.5 mix names images with a folder
        {"id": "000000000025", "image": f"coco/train2017/{coco_name(25)}",
         "conversations": turns("<image>\nWhat colour is the dog?", "Brown.")},
        # dropped: image not in the subset
        {"id": "000000000042", "image": coco_name(42), "conversations": turns("<image>\nWhat is this?", "A cat.")},
        # dropped: the same image and conversation again
        {"id": "000000000009", "image": coco_name(9),
         "conversations": turns("<image>\nDescribe the image in detail.", "A dog sits on grass.")},
        # dropped: turns do not alternate
        {"id": "000000000030", "image": coco_name(30),
         "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "human", "value": "Again"}]},
        # dropped: two <image> placeholders
        {"id": "000000000030", "image": coco_name(30), "conversations": turns("<image>\nA <image>?", "No.")},
        # dropped: text-only (no image)
        {"id": "text-1", "conversations": turns("What is 2 + 2?", "4.")},
    ]


def test_keeps_subset_images_and_counts_each_drop(coco_dir, tmp_path):
    src = tmp_path / "llava_instruct_150k.json"
    src.write_text(json.dumps(published_file()))
    out = tmp_path / "instruct.json"
    report = prepare_llava_instruct(src, coco_dir, out, split="train2017")
    assert (report["read"], report["kept"], report["dropped"]) == (8, 3, 5)
    assert report["dropped_per_reason"] == {NOT_IN_SUBSET: 1, DUPLICATE: 1, INVALID: 2, NO_IMAGE: 1}
    assert "000000000042.jpg" in report["examples"][NOT_IN_SUBSET][0]
    kept = json.loads(out.read_text())
    assert [s["image"] for s in kept] == [coco_name(9), coco_name(9), coco_name(25)]  # relative to DIR/images
    # the placeholder moved to the front of the first question, as the authors' preprocess_multimodal does
    assert kept[0]["conversations"][0]["value"] == "<image>\nWhat is the dog doing?"
    assert report["image_moved_to_front"] == 1
    assert all(s["conversations"][0]["value"].startswith("<image>\n") for s in kept)


def test_tokenizer_check_drops_misaligned_samples(coco_dir):
    """With a tokenizer, a sample whose per-turn pieces do not tokenise like the whole text is dropped."""
    tokenizer = load_tokenizer("tiny")
    good = {"id": "1", "image": coco_name(9), "conversations": turns("<image>\nWhat color is the circle?", "Red.")}
    kept, report = filter_llava_instruct([good], {coco_name(9)}, tokenizer=tokenizer, template="vicuna_v1")
    assert report["kept"] == 1 and report["template_checked"] == "vicuna_v1"

    class Splitting:  # a tokenizer whose pieces never add up to the whole: every sample must be dropped
        bos_token_id, eos_token = 1, "</s>"

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [len(text)]}

        def convert_ids_to_tokens(self, ids):
            return [str(i) for i in ids]

    kept, report = filter_llava_instruct([good], {coco_name(9)}, tokenizer=Splitting())
    assert kept == [] and report["dropped_per_reason"] == {TOKENIZATION: 1}


def test_cli_prints_report_and_fails_clearly_when_nothing_matches(coco_dir, tmp_path, capsys):
    src = tmp_path / "in.json"
    src.write_text(json.dumps(published_file()))
    out = tmp_path / "kept.json"
    assert main(["data", "llava-instruct", "--json", str(src), "--coco", str(coco_dir), "--out", str(out),
                 "--type", "conv"]) == 0
    printed = capsys.readouterr().out
    assert "kept 3 samples" in printed and f"1  {NOT_IN_SUBSET}" in printed
    assert all(s["type"] == "conv" for s in json.loads(out.read_text()))

    src.write_text(json.dumps([{"id": "1", "image": coco_name(77), "conversations": turns("<image>\nQ", "A")}]))
    assert main(["data", "llava-instruct", "--json", str(src), "--coco", str(coco_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no sample has its image" in err and str(src) in err
