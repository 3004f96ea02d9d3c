"""§3 symbolic context: what the text-only teacher is shown instead of the image.

The paper gives the teacher (text-only GPT-4 / ChatGPT) two kinds of symbolic representation of an image:
its captions, and its objects' bounding boxes, one per line as ``category: [x1, y1, x2, y2]`` with the
corners normalised to 0–1 (three decimals). Nothing else about the pixels reaches the teacher.
"""

from __future__ import annotations

from .records import ImageRecord


def normalised_box(bbox: tuple[float, float, float, float], width: int, height: int) -> list[float]:
    """COCO pixel box (x, y, w, h) -> corner box [x1, y1, x2, y2] in 0–1, rounded to 3 decimals."""
    x, y, w, h = bbox
    corners = [x / width, y / height, (x + w) / width, (y + h) / height]
    return [round(min(max(v, 0.0), 1.0), 3) for v in corners]


def box_lines(record: ImageRecord) -> list[str]:
    """One ``category: [x1, y1, x2, y2]`` line per object, in annotation order."""
    lines = []
    for obj in record.objects:
        box = ", ".join(f"{v:.3f}" for v in normalised_box(obj.bbox, record.width, record.height))
        lines.append(f"{obj.category}: [{box}]")
    return lines


def symbolic_context(record: ImageRecord, *, with_boxes: bool = True) -> str:
    """The teacher's view of one image: captions, a blank line, then the boxes.

    ``with_boxes=False`` gives the captions-only context that the paper's conversation seeds use.
    """
    text = "\n".join(record.captions)
    if with_boxes and record.objects:
        text += "\n\n" + "\n".join(box_lines(record))
    return text
