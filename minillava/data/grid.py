"""The 3×3 grid every scene is read on: cell names, the cell a box falls in, and how two cells relate.

§3 gives the text-only teacher boxes, and its answers speak of places ("at the top left", "above"). Here a place
is a cell of a 3×3 grid over the image — for the embedded scenes exactly the cell an object was drawn in, and in
the tiny preset exactly one patch token of the vision tower — so every answer about a place is unambiguous.
"""

from __future__ import annotations

GRID = 3
POSITIONS = ("top left", "top center", "top right", "middle left", "center", "middle right",
             "bottom left", "bottom center", "bottom right")  # cell index r * 3 + c


def cell_of_box(bbox: tuple[float, float, float, float], width: float, height: float) -> int:
    """The cell (0..8, row-major) holding the centre of a pixel box (x, y, w, h) in a ``width`` × ``height`` image."""
    x, y, w, h = bbox
    col = min(int(GRID * (x + w / 2) / width), GRID - 1)
    row = min(int(GRID * (y + h / 2) / height), GRID - 1)
    return row * GRID + col


def relation(cell_a: int, cell_b: int) -> str:
    """Where cell ``a`` lies from cell ``b``: 'above', 'to the left of', 'below and to the right of', ...

    The empty string when they are the same cell."""
    (ra, ca), (rb, cb) = divmod(cell_a, GRID), divmod(cell_b, GRID)
    vertical = "above" if ra < rb else "below" if ra > rb else ""
    horizontal = "to the left of" if ca < cb else "to the right of" if ca > cb else ""
    return f"{vertical} and {horizontal}" if vertical and horizontal else vertical or horizontal
