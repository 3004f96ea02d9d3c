"""Held-out images for a COCO subset: the quickstart trains on its train part and evaluates on the rest (§5).

The embedded scenes come with train / val / test splits; a subset made by `minillava data coco` is one split
(val2017, say), so the quickstart cuts it once, by image, into ``train`` and a held-out ``test``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

from ..files import write_json
from .coco import prepare_coco
from .records import annotation_paths, load_split, read_coco_json

HELDOUT_SHARE = 0.1  # COCO: the share of the subset's images held out for evaluation (never trained on)


def split_coco_subset(source: Path, split: str, out: Path, seed: int) -> dict[str, int]:
    """Write ``source``'s ``split`` to ``out`` as a ``train`` and a held-out ``test`` split, once.

    Images are drawn by ``seed``; each split keeps every field of the COCO files (crowd boxes included), and the
    pictures are hard-linked (copied where links are not possible), so the source subset stays as it was.
    """
    stamp = out / "settings.json"
    settings = {"source": str(source), "split": split, "seed": seed, "heldout_share": HELDOUT_SHARE}
    if stamp.is_file() and json.loads(stamp.read_text()) == settings:
        return json.loads((out / "counts.json").read_text())
    files = dict(zip(("captions", "instances"), annotation_paths(source, split)))
    data = {kind: read_coco_json(path) for kind, path in files.items()}  # a broken file: one line naming it
    # load_split checks every record and field of both files, so a bad one stops here, not halfway through
    load_split(source, split)
    ids = sorted(image["id"] for image in data["captions"]["images"])
    random.Random(f"heldout:{seed}").shuffle(ids)
    n_test = max(1, round(HELDOUT_SHARE * len(ids)))
    parts = {"test": set(ids[:n_test]), "train": set(ids[n_test:])}
    (out / "images").mkdir(parents=True, exist_ok=True)
    for name, keep in parts.items():
        for kind, whole in data.items():
            part = {**whole, "images": [im for im in whole["images"] if im["id"] in keep],
                    "annotations": [a for a in whole["annotations"] if a["image_id"] in keep]}
            path = annotation_paths(out, name)[0 if kind == "captions" else 1]
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, part)
    for image in data["captions"]["images"]:
        src, dst = source / "images" / image["file_name"], out / "images" / image["file_name"]
        if not dst.exists():
            try:
                os.link(src, dst)
            except OSError:  # another file system: copy
                shutil.copyfile(src, dst)
    for name in parts:  # instructions made from another split are stale
        (out / f"instruct_{name}.json").unlink(missing_ok=True)
    counts = {name: len(keep) for name, keep in parts.items()}
    write_json(out / "counts.json", counts)
    write_json(stamp, settings)  # last: a split interrupted before here is redone
    return counts


def coco_data(cfg, out_data: Path, log=print) -> Path:
    """The quickstart's data from a COCO subset: ``cfg.data_dir`` (made by `minillava data coco`, or downloaded
    into it here) split into train and held-out test images in ``out_data``."""
    source = Path(cfg.data_dir).resolve()
    if not all(path.is_file() for path in annotation_paths(source, cfg.data_split)):
        counts = prepare_coco(cfg.data_split, cfg.data_images, source, seed=cfg.seed, progress=False)
        log(f"data: COCO {cfg.data_split} subset of {counts['images']} images in {source}")
    counts = split_coco_subset(source, cfg.data_split, out_data, cfg.seed)
    log(f"data: {counts['train']} training and {counts['test']} held-out COCO images in {out_data}")
    return out_data
