"""One in-memory view of a COCO-format image set, shared by the embedded scenes and real COCO.

Both sources are written to disk in the same layout, so everything downstream has one code path:

    DIR/images/<file_name>                      the pictures
    DIR/annotations/captions_<split>.json       COCO captions  (images, annotations: image_id, caption)
    DIR/annotations/instances_<split>.json      COCO instances (images, annotations: bbox [x, y, w, h], categories)

The embedded scenes add an optional ``attributes`` dict (``color``, ``size``) to each instance annotation;
pycocotools and other COCO readers ignore unknown keys, and real COCO simply has none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..files import DataError, read_utf8, write_json  # DataError and read_utf8: imported from here too


@dataclass
class ObjectRecord:
    """One annotated object: its category name, pixel box (x, y, w, h) and optional attributes."""

    category: str
    bbox: tuple[float, float, float, float]
    attributes: dict = field(default_factory=dict)

    @property
    def color(self) -> str | None:
        return self.attributes.get("color")

    @property
    def size(self) -> str | None:
        return self.attributes.get("size")


@dataclass
class ImageRecord:
    """One image with everything §3 gives the text-only teacher: captions and boxes."""

    image_id: int
    file_name: str
    width: int
    height: int
    captions: list[str]
    objects: list[ObjectRecord]


def annotation_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """The captions and instances files of ``split`` under ``root``."""
    ann = Path(root) / "annotations"
    return ann / f"captions_{split}.json", ann / f"instances_{split}.json"


def image_path(root: str | Path, record: ImageRecord) -> Path:
    return Path(root) / "images" / record.file_name


def read_coco_json(path: Path) -> dict:
    """A COCO annotation file: one JSON object with lists 'images' and 'annotations'; else a DataError."""
    text = read_utf8(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with 'images' and 'annotations', got {type(data).__name__}")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: field '{key}' is missing or not a list")
    return data


def _field(path: Path, kind: str, index: int, rec: object, name: str, types: type | tuple):
    if not isinstance(rec, dict):
        raise DataError(f"{path}: {kind}[{index}] is not an object")
    if name not in rec:
        raise DataError(f"{path}: {kind}[{index}] (id={rec.get('id')}) has no field '{name}'")
    value = rec[name]
    if not isinstance(value, types) or isinstance(value, bool):
        raise DataError(f"{path}: {kind}[{index}] (id={rec.get('id')}) field '{name}' has the wrong type "
                        f"({type(value).__name__})")
    return value


def load_split(root: str | Path, split: str, *, skip_bad: bool = False,
               check_images: bool = False, skipped: list[str] | None = None) -> list[ImageRecord]:
    """Read ``split`` of a COCO-format directory into ImageRecords, sorted by image id.

    Bad records raise a one-line :class:`DataError`; with ``skip_bad`` they are skipped instead and the
    reason of each skip is appended to ``skipped`` (so the caller can count and report them).
    ``check_images`` also opens every image file to catch missing or corrupt pictures.
    """
    cap_path, inst_path = annotation_paths(root, split)
    captions_json, instances_json = read_coco_json(cap_path), read_coco_json(inst_path)
    skipped = skipped if skipped is not None else []

    def bad(message: str) -> None:
        if not skip_bad:
            raise DataError(message)
        skipped.append(message)

    images: dict[int, dict] = {}
    for i, rec in enumerate(instances_json["images"]):
        image_id = _field(inst_path, "images", i, rec, "id", int)
        _field(inst_path, "images", i, rec, "file_name", str)
        _field(inst_path, "images", i, rec, "width", int)
        _field(inst_path, "images", i, rec, "height", int)
        images[image_id] = rec

    categories = {}
    for i, rec in enumerate(instances_json.get("categories", [])):
        categories[_field(inst_path, "categories", i, rec, "id", int)] = _field(
            inst_path, "categories", i, rec, "name", str)

    objects: dict[int, list[ObjectRecord]] = {k: [] for k in images}
    bad_images: set[int] = set()
    for i, ann in enumerate(instances_json["annotations"]):
        image_id = _field(inst_path, "annotations", i, ann, "image_id", int)
        cat = _field(inst_path, "annotations", i, ann, "category_id", int)
        bbox = _field(inst_path, "annotations", i, ann, "bbox", list)
        if image_id not in images:
            bad(f"{inst_path}: annotations[{i}] (id={ann.get('id')}) refers to unknown image_id {image_id}")
            continue
        if cat not in categories:
            bad(f"{inst_path}: annotations[{i}] (id={ann.get('id')}) field 'category_id' is unknown: {cat}")
            bad_images.add(image_id)
            continue
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox) or bbox[2] < 0 or bbox[3] < 0:
            bad(f"{inst_path}: annotations[{i}] (id={ann.get('id')}) field 'bbox' is not [x, y, w, h]: {bbox}")
            bad_images.add(image_id)
            continue
        attrs = dict(ann.get("attributes") or {})
        if ann.get("iscrowd"):  # one box around many instances (a crowd, a pile of bananas): not countable
            attrs["crowd"] = True
        objects[image_id].append(ObjectRecord(categories[cat], tuple(float(v) for v in bbox), dict(attrs)))

    captions: dict[int, list[str]] = {k: [] for k in images}
    for i, ann in enumerate(captions_json["annotations"]):
        image_id = _field(cap_path, "annotations", i, ann, "image_id", int)
        text = _field(cap_path, "annotations", i, ann, "caption", str)
        if image_id not in captions:
            bad(f"{cap_path}: annotations[{i}] (id={ann.get('id')}) refers to unknown image_id {image_id}")
            continue
        captions[image_id].append(text.strip())

    records = []
    for image_id in sorted(images):
        info = images[image_id]
        if image_id in bad_images:
            continue  # already reported above
        if not captions[image_id]:
            bad(f"{cap_path}: image id={image_id} ({info['file_name']}) has no captions")
            continue
        record = ImageRecord(image_id, info["file_name"], info["width"], info["height"],
                             captions[image_id], objects[image_id])
        if check_images:
            try:
                verify_image(image_path(root, record))
            except DataError as e:
                bad(f"{e} (image id={image_id})")
                continue
        records.append(record)
    return records


def verify_image(path: Path) -> None:
    """Fail with a one-line DataError if ``path`` is missing or not a decodable image."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            im.load()  # forces a full decode, which catches truncated files
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image ({e.__class__.__name__}: {e})") from None


def write_split(root: str | Path, split: str, records: list[ImageRecord], categories: list[str],
                description: str) -> tuple[Path, Path]:
    """Write ``records`` as COCO captions and instances files (images are written by the caller)."""
    cap_path, inst_path = annotation_paths(root, split)
    cap_path.parent.mkdir(parents=True, exist_ok=True)
    cat_ids = {name: i + 1 for i, name in enumerate(categories)}
    info = {"description": description, "version": "1.0", "year": 2026, "contributor": "minillava",
            "date_created": "2026-01-01"}
    licenses = [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}]
    images = [{"id": r.image_id, "file_name": r.file_name, "width": r.width, "height": r.height, "license": 1}
              for r in records]
    caption_anns, instance_anns = [], []
    for r in records:
        for text in r.captions:
            caption_anns.append({"id": len(caption_anns) + 1, "image_id": r.image_id, "caption": text})
        for obj in r.objects:
            x, y, w, h = obj.bbox
            ann = {"id": len(instance_anns) + 1, "image_id": r.image_id, "category_id": cat_ids[obj.category],
                   "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                   # a polygon equal to the box, so COCO tools that expect segmentation find one
                   "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}
            if obj.attributes:
                ann["attributes"] = obj.attributes
            instance_anns.append(ann)
    base = {"info": info, "licenses": licenses, "images": images}
    write_json(cap_path, {**base, "annotations": caption_anns})
    write_json(inst_path, {**base, "annotations": instance_anns,
                          "categories": [{"id": i, "name": n, "supercategory": "shape"} for n, i in cat_ids.items()]})
    return cap_path, inst_path
