"""How well a painting follows its guides: the measures ``tools/bench_mini.py`` reports and
``tests/bridge/test_mini.py`` asserts. Pictures are float (H, W, 3) in [0, 1]."""
import cv2
import numpy as np


def edges(picture: np.ndarray, low: float = 20.0, high: float = 60.0) -> np.ndarray:
    """Canny edges of a picture's luminance (fixed thresholds on 0-255, after a 3x3 blur)."""
    grey = cv2.cvtColor(np.clip(picture * 255, 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)
    return cv2.Canny(cv2.GaussianBlur(grey, (3, 3), 0), low, high) > 0


def guide_edges(depth_picture: np.ndarray, normal_picture: np.ndarray) -> np.ndarray:
    """Where the geometry has an edge: a depth step (silhouettes) or a crease in the normals."""
    depth = np.clip(depth_picture[..., 0] * 255, 0, 255).astype(np.uint8)
    found = cv2.Canny(depth, 20, 40) > 0
    for channel in range(3):
        found |= cv2.Canny(np.clip(normal_picture[..., channel] * 255, 0, 255).astype(np.uint8), 40, 80) > 0
    return found


def edge_recall(geometry: np.ndarray, painted: np.ndarray, tolerance: int = 2) -> float:
    """The fraction of the geometry's edge pixels with a painted edge within ``tolerance`` pixels."""
    if not geometry.any():
        return float("nan")
    size = 2 * tolerance + 1
    near_painted = cv2.dilate(painted.astype(np.uint8), np.ones((size, size), np.uint8)) > 0
    return float(near_painted[geometry].mean())


def edge_alignment(depth_picture, normal_picture, painting) -> dict:
    """Edge recall of a painting against its own guides, and against the same guides mirrored
    (the chance level for a picture with as many edges in unrelated places)."""
    geometry = guide_edges(depth_picture, normal_picture)
    painted = edges(painting)
    return {"recall": edge_recall(geometry, painted), "chance": edge_recall(geometry[:, ::-1], painted),
            "painted_edge_fraction": float(painted.mean())}


def change_where_scene_changes(guides_a, guides_b, painting_a, painting_b, threshold: float = 0.05) -> dict:
    """Mean absolute change of two paintings where their guides changed, and where they did not."""
    changed = np.zeros(painting_a.shape[:2], dtype=bool)
    for a, b in zip(guides_a, guides_b):
        changed |= np.abs(a - b).max(axis=-1) > threshold
    difference = np.abs(painting_a - painting_b).mean(axis=-1)
    return {"changed_fraction": float(changed.mean()),
            "change_where_changed": float(difference[changed].mean()) if changed.any() else float("nan"),
            "change_where_still": float(difference[~changed].mean()) if (~changed).any() else float("nan")}
