"""A render camera as plain matrices, with Blender's raster conventions.

Raster space follows Blender's render passes: +x right, +y UP, pixel (i, j) covers
[i, i+1) x [j, j+1) and is sampled at its centre (i + 0.5, j + 0.5).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def inverse4(m: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 matrix in closed form (cross products of its columns).

    ``np.linalg.inv`` goes through LAPACK, whose thread pool costs milliseconds a call on
    a busy machine; this is a few dozen multiply-adds. Raises ``LinAlgError`` if singular."""
    m = np.asarray(m, dtype=np.float64)
    a, b, c, d = m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3]
    x, y, z, w = m[3]
    s, t = np.cross(a, b), np.cross(c, d)
    u, v = a * y - b * x, c * w - d * z
    determinant = float(s @ v + t @ u)
    if not np.isfinite(determinant) or abs(determinant) <= 1e-300:
        raise np.linalg.LinAlgError("singular matrix")
    rows = [np.append(np.cross(b, v) + t * y, -(b @ t)), np.append(np.cross(v, a) - t * x, a @ t),
            np.append(np.cross(d, u) + s * w, -(d @ s)), np.append(np.cross(u, c) - s * z, c @ s)]
    return np.stack(rows) / determinant


@dataclass(frozen=True)
class Camera:
    """World-to-camera ``view`` (camera looks down -Z) and OpenGL-style ``projection``.

    ``projection`` is what Blender's ``Object.calc_matrix_camera`` returns for the
    render size and pixel aspect, so sensor fit, lens shift, orthographic scale and
    non-square pixels are all inside it.
    """

    view: np.ndarray
    projection: np.ndarray
    width: int
    height: int
    clip_start: float
    clip_end: float
    view_projection: np.ndarray = field(init=False, repr=False)
    inverse_view_projection: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        view = np.asarray(self.view, dtype=np.float64).reshape(4, 4)
        projection = np.asarray(self.projection, dtype=np.float64).reshape(4, 4)
        if not (np.all(np.isfinite(view)) and np.all(np.isfinite(projection))):
            raise ValueError("the camera transform is not finite (NaN or infinity)")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"render size {self.width}x{self.height} is empty")
        object.__setattr__(self, "view", view)
        object.__setattr__(self, "projection", projection)
        vp = projection @ view
        object.__setattr__(self, "view_projection", vp)
        try:
            inverse = inverse4(vp)
        except np.linalg.LinAlgError as error:
            raise ValueError("the camera projection is singular (zero scale or size)") from error
        object.__setattr__(self, "inverse_view_projection", inverse)

    @property
    def is_ortho(self) -> bool:
        """Orthographic projections keep w = 1 whatever the depth."""
        return self.projection[3, 3] != 0.0

    @property
    def position(self) -> np.ndarray:
        return inverse4(self.view)[:3, 3]

    def to_clip(self, points: np.ndarray) -> np.ndarray:
        """World points (..., 3) to homogeneous clip coordinates (..., 4)."""
        m = self.view_projection
        flat = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return (flat @ m[:, :3].T + m[:, 3]).reshape(points.shape[:-1] + (4,))

    def view_depth(self, points: np.ndarray) -> np.ndarray:
        v = self.view
        return -(points @ v[2, :3] + v[2, 3])

    @property
    def forward(self) -> np.ndarray:
        """Unit world direction the camera looks along."""
        return -self.view[2, :3] / np.linalg.norm(self.view[2, :3])

    def affine_rays(self):
        """Pixel rays as affine functions of raster position (px, py).

        Returns ``(origin, direction)``, each a (3, 3) array of rows (constant,
        d/dpx, d/dpy). Perspective: every ray starts at the camera and its direction
        (not unit) is affine. Orthographic: rays start on the camera plane (depth 0),
        affinely in the pixel, and share the unit forward direction.
        """
        px = np.array([0.0, 1.0, 0.0])
        py = np.array([0.0, 0.0, 1.0])
        ndc_x = 2.0 * px / self.width - 1.0
        ndc_y = 2.0 * py / self.height - 1.0
        near = _unproject(self.inverse_view_projection, ndc_x, ndc_y, -1.0)
        far = _unproject(self.inverse_view_projection, ndc_x, ndc_y, 1.0)
        if self.is_ortho:
            starts = near - self.forward * self.view_depth(near)[:, None]
            origin = np.stack([starts[0], starts[1] - starts[0], starts[2] - starts[0]])
            direction = np.stack([self.forward, np.zeros(3), np.zeros(3)])
        else:
            ends = far - self.position
            origin = np.stack([self.position, np.zeros(3), np.zeros(3)])
            direction = np.stack([ends[0], ends[1] - ends[0], ends[2] - ends[0]])
        return origin, direction

    def depth_from_ndc(self, z_ndc: np.ndarray) -> np.ndarray:
        """View-axis depth of points whose NDC depth is ``z_ndc`` (inverts the projection)."""
        p = self.projection
        z = np.asarray(z_ndc, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            view_z = (p[2, 3] - z * p[3, 3]) / (z * p[3, 2] - p[2, 2])
        return -view_z

    def pixel_rays(self, px: np.ndarray, py: np.ndarray):
        """Rays through raster positions: origins on the near plane and directions (not unit)."""
        ndc_x = 2.0 * px / self.width - 1.0
        ndc_y = 2.0 * py / self.height - 1.0
        inv = self.inverse_view_projection
        near = _unproject(inv, ndc_x, ndc_y, -1.0)
        far = _unproject(inv, ndc_x, ndc_y, 1.0)
        return near, far - near


def _unproject(inv: np.ndarray, ndc_x, ndc_y, ndc_z: float) -> np.ndarray:
    hom = (
        inv[:, 0][None, :] * ndc_x[:, None]
        + inv[:, 1][None, :] * ndc_y[:, None]
        + inv[:, 2][None, :] * ndc_z
        + inv[:, 3][None, :]
    )
    return hom[:, :3] / hom[:, 3:4]
