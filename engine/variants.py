"""The variant picker's picture: several seeds of one frame side by side, each tile labelled
with its number and seed. No ``bpy``.

Labels are drawn into the pixels with OpenCV's ``putText`` where OpenCV is importable (the
worker's and the tests' environments); Blender's own Python has no OpenCV, so there the
digits come from a small built-in bitmap font instead. Either way the label is part of the
picture: it survives saving, and no overlay is needed.
"""
from __future__ import annotations

import math

import numpy as np

GAP = 2  # pixels of dark border between tiles
BACKGROUND = 0.08
# 3x5 bitmap glyphs (rows top-down, 3 bits each, most significant = left) for the fallback.
_GLYPHS = {
    "0": (7, 5, 5, 5, 7), "1": (2, 6, 2, 2, 7), "2": (7, 1, 7, 4, 7), "3": (7, 1, 7, 1, 7), "4": (5, 5, 7, 1, 1),
    "5": (7, 4, 7, 1, 7), "6": (7, 4, 7, 5, 7), "7": (7, 1, 1, 1, 1), "8": (7, 5, 7, 5, 7), "9": (7, 5, 7, 1, 7),
    ":": (0, 2, 0, 2, 0), " ": (0, 0, 0, 0, 0), "#": (5, 7, 5, 7, 5),
}


def layout(count: int) -> tuple[int, int]:
    """(columns, rows) of a grid for ``count`` tiles: as square as possible, wider than tall."""
    columns = math.ceil(math.sqrt(count))
    return columns, math.ceil(count / columns)


def tile_origin(index: int, count: int, tile_width: int, tile_height: int) -> tuple[int, int]:
    """(x, y) of tile ``index``'s top-left pixel, rows top-down; tiles run left to right, then down."""
    columns, _rows = layout(count)
    return GAP + (index % columns) * (tile_width + GAP), GAP + (index // columns) * (tile_height + GAP)


def grid_size(count: int, tile_width: int, tile_height: int) -> tuple[int, int]:
    """(width, height) of the whole grid picture."""
    columns, rows = layout(count)
    return GAP + columns * (tile_width + GAP), GAP + rows * (tile_height + GAP)


def tile_at(x: int, y: int, count: int, tile_width: int, tile_height: int) -> int | None:
    """The tile under pixel (x, y) (rows top-down), or None over a gap or past the last tile."""
    columns, _rows = layout(count)
    column, x_in = divmod(x - GAP, tile_width + GAP)
    row, y_in = divmod(y - GAP, tile_height + GAP)
    index = row * columns + column
    if x < GAP or y < GAP or x_in >= tile_width or y_in >= tile_height or column >= columns or index >= count:
        return None
    return int(index)


def tile_at_view(u: float, v: float, count: int, tile_width: int, tile_height: int) -> int | None:
    """The tile under a point of the Image Editor's view of the grid: (u, v) from 0 to 1 over
    the image, v up (Blender's view coordinates), as ``region_to_view`` gives them."""
    width, height = grid_size(count, tile_width, tile_height)
    if not (0.0 <= u < 1.0 and 0.0 < v <= 1.0):
        return None
    return tile_at(int(u * width), int((1.0 - v) * height), count, tile_width, tile_height)


def compose(pictures: list, tile_width: int, tile_height: int, labels: list) -> np.ndarray:
    """The grid (H, W, 3) float32 display sRGB, rows top-down: each picture (or a dark tile while
    it is not painted yet) at its place, with its label in its top-left corner."""
    count = len(labels)
    width, height = grid_size(count, tile_width, tile_height)
    grid = np.full((height, width, 3), BACKGROUND, dtype=np.float32)
    for index, (picture, label) in enumerate(zip(pictures, labels)):
        x, y = tile_origin(index, count, tile_width, tile_height)
        tile = grid[y:y + tile_height, x:x + tile_width]
        if picture is not None:
            tile[...] = np.asarray(picture, dtype=np.float32)[:tile_height, :tile_width, :3]
        draw_label(tile, label)
    return grid


def draw_label(tile: np.ndarray, text: str) -> None:
    """Write ``text`` in white with a black outline into the tile's top-left corner (in place)."""
    height = tile.shape[0]
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        scale = max(0.3, min(1.2, height / 160))
        thickness = max(1, round(scale * 1.5))
        baseline = 4 + round(14 * scale)
        canvas = np.ascontiguousarray(tile)
        cv2.putText(canvas, text, (4, baseline), cv2.FONT_HERSHEY_SIMPLEX, scale, (0.0, 0.0, 0.0), thickness + 2,
                    cv2.LINE_AA)
        cv2.putText(canvas, text, (4, baseline), cv2.FONT_HERSHEY_SIMPLEX, scale, (1.0, 1.0, 1.0), thickness,
                    cv2.LINE_AA)
        tile[...] = canvas
        return
    _draw_bitmap(tile, text, pixel=max(1, height // 48))


def _draw_bitmap(tile: np.ndarray, text: str, pixel: int) -> None:
    glyphs = [_GLYPHS.get(character, _GLYPHS[" "]) for character in text]
    mask = np.zeros((5, 4 * len(glyphs)), dtype=bool)
    for index, rows in enumerate(glyphs):
        for row, bits in enumerate(rows):
            for column in range(3):
                mask[row, 4 * index + column] = bool(bits >> (2 - column) & 1)
    mask = np.kron(mask, np.ones((pixel, pixel), dtype=bool))
    height, width = min(mask.shape[0], tile.shape[0] - 4), min(mask.shape[1], tile.shape[1] - 4)
    if height <= 0 or width <= 0:
        return
    mask = mask[:height, :width]
    outline = np.zeros((height + 2, width + 2), dtype=bool)
    for dy in range(3):
        for dx in range(3):
            outline[dy:dy + height, dx:dx + width] |= mask
    region = tile[1:3 + height, 1:3 + width]
    region[outline[:region.shape[0], :region.shape[1]]] = 0.0
    tile[2:2 + height, 2:2 + width][mask] = 1.0


def labels(seeds: list) -> list:
    """Each tile's label: its number (the button that chooses it) and its seed."""
    return [f"{index + 1}: {seed}" for index, seed in enumerate(seeds)]
