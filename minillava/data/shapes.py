"""The embedded default: synthetic scenes of coloured shapes, written in real COCO format.

No pretrained weights or COCO images can be assumed offline, so the tiny preset trains on scenes whose ground
truth is exact: 1–``max_objects`` shapes (6 shapes × 6 colours × 2 sizes) placed in distinct cells of a 3×3
grid, each with 5 captions. Because the files are genuine COCO (captions + instances JSON, pixel boxes), every
test exercises the same code path that real COCO takes.

Splits are disjoint by *content*, not only by file: a scene's layout (which shape, colour and size sits in
which cell) is hashed, and the hash decides which split may hold it. A held-out scene is therefore a
combination the model never saw in training.
"""

from __future__ import annotations

import hashlib
import math
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from .grid import GRID, POSITIONS, cell_of_box, relation
from .records import ImageRecord, ObjectRecord, write_split
from .words import count_phrase, join_words

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
          "yellow": (235, 200, 30), "purple": (140, 60, 180), "orange": (245, 130, 20)}
SIZES = {"large": 0.80, "small": 0.45}  # side of the shape as a fraction of its grid cell
SPLIT_FRACTIONS = {"train": (0, 80), "val": (80, 90), "test": (90, 100)}  # ranges of layout-hash % 100


@dataclass(frozen=True)
class Shape:
    """One object of a scene: what it is and which grid cell holds it."""

    shape: str
    color: str
    size: str
    cell: int  # 0..8, row-major: 0 = top left, 4 = center, 8 = bottom right

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    def phrase(self, article: str = "a") -> str:
        return f"{article} {self.size} {self.color} {self.shape}"


def layout_key(objects: list[Shape]) -> str:
    return ";".join(f"{o.cell}:{o.size}:{o.color}:{o.shape}" for o in sorted(objects, key=lambda o: o.cell))


def layout_bucket(objects: list[Shape]) -> int:
    """0–99, from a hash of the layout: which split may hold this scene."""
    return int(hashlib.sha1(layout_key(objects).encode()).hexdigest()[:8], 16) % 100


def sample_layout(rng: random.Random, max_objects: int) -> list[Shape]:
    n = rng.randint(1, max_objects)
    cells = sorted(rng.sample(range(GRID * GRID), n))
    return [Shape(rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(SIZES)), c) for c in cells]


def shape_polygon(shape: str, cx: float, cy: float, side: float) -> list[tuple[float, float]] | None:
    """Vertices of ``shape`` centred at (cx, cy) fitting a ``side``-wide box; None for a circle."""
    r = side / 2
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "hexagon":
        return [(cx + r * math.cos(math.pi / 3 * k), cy + r * math.sin(math.pi / 3 * k)) for k in range(6)]
    if shape == "star":
        return [(cx + (r if k % 2 == 0 else r * 0.45) * math.sin(math.pi / 5 * k),
                 cy - (r if k % 2 == 0 else r * 0.45) * math.cos(math.pi / 5 * k)) for k in range(10)]
    if shape == "cross":
        t = r / 3  # half the bar width
        return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t),
                (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t),
                (cx - r, cy - t), (cx - t, cy - t)]
    if shape == "circle":
        return None
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def object_box(obj: Shape, size_px: int, jitter: tuple[float, float]) -> tuple[float, float, float, float]:
    """Pixel box (x, y, w, h) of ``obj``: centred in its cell, shifted by ``jitter`` (fractions of the slack)."""
    cell = size_px / GRID
    side = cell * SIZES[obj.size]
    slack = (cell - side) / 2 * 0.8  # keep a margin so objects never touch or cross a cell border
    row, col = divmod(obj.cell, GRID)
    cx = (col + 0.5) * cell + jitter[0] * slack
    cy = (row + 0.5) * cell + jitter[1] * slack
    return (cx - side / 2, cy - side / 2, side, side)


def render_scene(objects: list[Shape], boxes: list[tuple], size_px: int, background: int,
                 supersample: int = 4) -> Image.Image:
    """Draw the scene at ``supersample`` × resolution and downsample, for smooth anti-aliased edges."""
    s = supersample
    img = Image.new("RGB", (size_px * s, size_px * s), (background,) * 3)
    draw = ImageDraw.Draw(img)
    for obj, (x, y, w, h) in zip(objects, boxes):
        fill = COLORS[obj.color]
        poly = shape_polygon(obj.shape, (x + w / 2) * s, (y + h / 2) * s, w * s)
        if poly is None:
            draw.ellipse([x * s, y * s, (x + w) * s, (y + h) * s], fill=fill)
        else:
            draw.polygon(poly, fill=fill)
    return img.reduce(s)  # box-filter downsampling: exact area averaging, and fast


# --- captions ------------------------------------------------------------------------------------------------

def _grouped(objects: list[Shape], key) -> list[tuple[object, int]]:
    """Group objects by ``key`` keeping first-seen order: [(value, count), ...]."""
    counts: dict[str, int] = {}
    for o in objects:
        counts[key(o)] = counts.get(key(o), 0) + 1
    return list(counts.items())


def make_captions(objects: list[Shape], rng: random.Random) -> list[str]:
    """Five captions in different styles, each true of the scene, with correct counts and plurals."""
    n = len(objects)
    listed = join_words([o.phrase() for o in objects])
    by_shape = join_words([count_phrase(s, k) for s, k in _grouped(objects, lambda o: o.shape)])
    placed = join_words([f"{o.phrase()} at the {o.position}" for o in objects])
    groups = _grouped(objects, lambda o: o.shape)
    colored = join_words([count_phrase(f"{color} {shape}", k, one="a") for (color, shape), k in
                          _grouped(objects, lambda o: (o.color, o.shape))])
    if n >= 2:
        a, b = rng.sample(objects, 2)
        relational = f"The {a.color} {a.shape} is {relation(a.cell, b.cell)} the {b.color} {b.shape}."
    else:
        relational = f"A single {objects[0].color} {objects[0].shape} on a light background."
    return [
        f"{count_phrase('shape', n).capitalize()}: {listed}.",
        f"{placed[0].upper()}{placed[1:]}.",
        f"There {'is' if groups[0][1] == 1 else 'are'} {by_shape} on a plain background.",
        f"{colored[0].upper()}{colored[1:]}.",
        relational,
    ]


# --- the split writer ----------------------------------------------------------------------------------------

def generate_split(n_images: int, split: str, seed: int, *, size_px: int = 96, max_objects: int = 4,
                   first_id: int = 1) -> list[tuple[ImageRecord, list[Shape], Image.Image]]:
    """Sample ``n_images`` scenes whose layout hash falls in ``split``'s range; deterministic per seed."""
    lo, hi = SPLIT_FRACTIONS[split]
    rng = random.Random(f"{seed}:{split}")
    out, seen = [], set()
    while len(out) < n_images:
        objects = sample_layout(rng, max_objects)
        key = layout_key(objects)
        jitters = [(rng.uniform(-1, 1), rng.uniform(-1, 1)) for _ in objects]
        background = rng.randint(225, 250)
        caption_rng = random.Random(rng.random())
        if not lo <= layout_bucket(objects) < hi:
            continue
        seen.add(key)
        image_id = first_id + len(out)
        boxes = [object_box(o, size_px, j) for o, j in zip(objects, jitters)]
        record = ImageRecord(
            image_id=image_id, file_name=f"{split}_{image_id:06d}.png", width=size_px, height=size_px,
            captions=make_captions(objects, caption_rng),
            objects=[ObjectRecord(o.shape, tuple(round(v, 2) for v in b), {"color": o.color, "size": o.size})
                     for o, b in zip(objects, boxes)])
        out.append((record, objects, render_scene(objects, boxes, size_px, background)))
    return out


def write_shapes_dataset(out_dir: str | Path, n_images: int, seed: int = 0, *, size_px: int = 96,
                         max_objects: int = 4, splits: dict[str, float] | None = None) -> dict[str, int]:
    """Write train/val/test splits (80/10/10 of ``n_images`` by default) as PNGs + COCO JSON under ``out_dir``."""
    if n_images < 1 or size_px < 12 or not 1 <= max_objects <= GRID * GRID:
        raise ValueError(f"need images >= 1, size >= 12 px and 1 <= max_objects <= 9 "
                         f"(got {n_images}, {size_px}, {max_objects})")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    splits = splits or {"train": 0.8, "val": 0.1, "test": 0.1}
    counts, first_id = {}, 1
    for split, fraction in splits.items():
        n = max(1, round(n_images * fraction))
        scenes = generate_split(n, split, seed, size_px=size_px, max_objects=max_objects, first_id=first_id)
        first_id += n
        with ThreadPoolExecutor(max_workers=4) as pool:  # PNG encoding releases the GIL
            list(pool.map(lambda s: s[2].save(out_dir / "images" / s[0].file_name, compress_level=1), scenes))
        write_split(out_dir, split, [s[0] for s in scenes], list(SHAPES),
                    f"minillava embedded shapes, split {split}, seed {seed}, {size_px}px")
        counts[split] = n
    return counts


def scene_objects(record: ImageRecord) -> list[Shape]:
    """Recover the grid layout of an embedded-scene record from its boxes and attributes."""
    return [Shape(o.category, o.color, o.size, cell_of_box(o.bbox, record.width, record.height))
            for o in record.objects]
