"""The variant picker's grid: layout, tile lookup and labels drawn into the pixels (no bpy)."""
import builtins

import numpy as np
import pytest

from silk.engine import variants


def test_grid_layout_places_every_tile_and_finds_it_again():
    assert variants.layout(6) == (3, 2) and variants.layout(4) == (2, 2) and variants.layout(7) == (3, 3)
    width, height = variants.grid_size(6, 40, 30)
    assert (width, height) == (2 + 3 * 42, 2 + 2 * 32)
    for index in range(6):
        x, y = variants.tile_origin(index, 6, 40, 30)
        assert variants.tile_at(x, y, 6, 40, 30) == index
        assert variants.tile_at(x + 39, y + 29, 6, 40, 30) == index
        assert variants.tile_at(x + 40, y, 6, 40, 30) is None  # the gap
    assert variants.tile_at(0, 0, 6, 40, 30) is None
    assert variants.tile_at(*variants.tile_origin(7, 9, 40, 30), 7, 40, 30) is None  # past the last tile
    # A click in the Image Editor: view coordinates, v up. Tile 0 is top left, tile 5 bottom right.
    assert variants.tile_at_view(0.05, 0.95, 6, 40, 30) == 0
    assert variants.tile_at_view(0.95, 0.05, 6, 40, 30) == 5
    assert variants.tile_at_view(0.5, 0.75, 6, 40, 30) == 1
    assert variants.tile_at_view(1.2, 0.5, 6, 40, 30) is None and variants.tile_at_view(0.5, -0.1, 6, 40, 30) is None


@pytest.mark.parametrize("opencv", [True, False])
def test_tiles_hold_their_pictures_and_a_white_label_on_black(opencv, monkeypatch):
    if not opencv:  # Blender's own Python has no OpenCV: the built-in digits must do
        real_import = builtins.__import__
        monkeypatch.setattr(builtins, "__import__", lambda name, *args, **kwargs: (
            (_ for _ in ()).throw(ImportError(name)) if name == "cv2" else real_import(name, *args, **kwargs)))
    pictures = [np.full((48, 64, 3), value, np.float32) for value in (0.5, 0.25)] + [None]
    labels = variants.labels([42, 1234567, 9])
    assert labels == ["1: 42", "2: 1234567", "3: 9"]
    grid = variants.compose(pictures, 64, 48, labels)
    assert grid.shape == (2 + 2 * 50, 2 + 2 * 66, 3) and grid.dtype == np.float32
    for index, value in enumerate((0.5, 0.25, variants.BACKGROUND)):
        x, y = variants.tile_origin(index, 3, 64, 48)
        tile = grid[y:y + 48, x:x + 64]
        corner, rest = tile[:16, :40], tile[24:, :]
        assert np.allclose(rest, value)  # the picture itself is untouched below the label
        assert corner.max() > 0.95 and corner.min() < 0.05  # white text, black outline
    # Longer seeds make longer labels.
    first = grid[2:18, 2:66].max(axis=(0, 2)) > 0.95
    x, _ = variants.tile_origin(1, 3, 64, 48)
    second = grid[2:18, x:x + 64].max(axis=(0, 2)) > 0.95
    assert np.flatnonzero(second).max() > np.flatnonzero(first).max()
