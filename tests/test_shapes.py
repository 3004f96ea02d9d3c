"""The embedded scenes: genuine COCO files, deterministic, disjoint splits, truthful captions."""

import json
import re

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from minillava.data.records import annotation_paths, image_path, load_split
from minillava.data.shapes import COLORS, SHAPES, SIZES, layout_key, scene_objects, write_shapes_dataset


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    counts = write_shapes_dataset(root, 300, seed=3, size_px=96)
    return root, counts


def test_pycocotools_loads_captions_and_instances(scenes):
    root, counts = scenes
    for split, n in counts.items():
        captions, instances = (COCO(str(p)) for p in annotation_paths(root, split))
        assert len(captions.getImgIds()) == n
        assert len(captions.getAnnIds()) == 5 * n  # five captions per image
        assert {c["name"] for c in instances.loadCats(instances.getCatIds())} == set(SHAPES)
        ann = instances.loadAnns(instances.getAnnIds())[0]
        assert set(ann) >= {"bbox", "area", "category_id", "iscrowd", "id", "image_id"}
        assert instances.annToMask(ann).sum() > 0
    info = json.loads(annotation_paths(root, "train")[1].read_text())
    assert set(info) >= {"info", "licenses", "images", "annotations", "categories"}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_shapes_dataset(a, 30, seed=1)
    write_shapes_dataset(b, 30, seed=1)
    write_shapes_dataset(c, 30, seed=2)
    for name in ["annotations/instances_train.json", "annotations/captions_val.json", "images/train_000001.png"]:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "annotations/instances_train.json").read_bytes() != (c / "annotations/instances_train.json").read_bytes()


def test_splits_are_disjoint_by_layout(scenes):
    root, _ = scenes
    layouts = {split: {layout_key(scene_objects(r)) for r in load_split(root, split)} for split in ("train", "val", "test")}
    assert not layouts["train"] & layouts["test"]
    assert not layouts["train"] & layouts["val"]
    assert not layouts["val"] & layouts["test"]


def test_objects_do_not_overlap_and_have_attributes(scenes):
    root, _ = scenes
    for r in load_split(root, "train"):
        assert 1 <= len(r.objects) <= 4
        assert len({s.cell for s in scene_objects(r)}) == len(r.objects)
        for o in r.objects:
            assert o.color in COLORS and o.size in SIZES
            x, y, w, h = o.bbox
            assert 0 <= x and 0 <= y and x + w <= r.width and y + h <= r.height


def test_pixels_agree_with_annotations(scenes):
    """The centre pixel of every box has the annotated colour: annotations describe what is drawn."""
    root, _ = scenes
    for r in load_split(root, "test")[:40]:
        pixels = np.asarray(Image.open(image_path(root, r)).convert("RGB")).astype(int)
        for o in r.objects:
            if o.category in ("star", "cross", "triangle"):
                continue  # their centre is inside the shape too, but thin parts may be anti-aliased
            x, y, w, h = o.bbox
            centre = pixels[int(y + h / 2), int(x + w / 2)]
            assert np.abs(centre - np.array(COLORS[o.color])).max() < 30, (r.file_name, o)


def test_captions_count_correctly_with_plurals(scenes):
    root, _ = scenes
    numbers = {"one": 1, "two": 2, "three": 3, "four": 4}
    seen_plural = False
    for r in load_split(root, "train"):
        assert len(r.captions) == 5 and len(set(r.captions)) == 5
        first = r.captions[0]
        word = first.split()[0].lower()
        assert numbers[word] == len(r.objects), first
        assert first.split()[1].rstrip(":") == ("shape" if len(r.objects) == 1 else "shapes")
        for shape in SHAPES:
            n = sum(o.category == shape for o in r.objects)
            plural = "crosses" if shape == "cross" else shape + "s"
            if n >= 2:
                seen_plural = True
                assert re.search(rf"\b{[k for k, v in numbers.items() if v == n][0]} {plural}\b", r.captions[2])
            if n == 1:
                assert re.search(rf"\bone {shape}\b", r.captions[2])
        for caption in r.captions:  # never "one circles" or "two circle"
            assert not re.search(r"\b(one|a|an) \w* ?(circles|squares|triangles|stars|hexagons|crosses)\b", caption)
            assert not re.search(r"\b(two|three|four) (\w+ )?(circle|square|triangle|star|hexagon|cross)\b", caption)
    assert seen_plural


@pytest.mark.parametrize("size", [48, 224, 336])
def test_any_resolution(tmp_path, size):
    write_shapes_dataset(tmp_path, 10, seed=0, size_px=size)
    r = load_split(tmp_path, "train")[0]
    assert Image.open(image_path(tmp_path, r)).size == (size, size) == (r.width, r.height)
