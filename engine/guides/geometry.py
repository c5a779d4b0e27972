"""A frame of the scene as plain arrays: meshes, their placements, and the camera."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable

import numpy as np

from .camera import Camera


@dataclass
class Mesh:
    """A triangulated mesh in object space.

    ``corner_normals`` holds the shading normal of each triangle corner (T, 3, 3), as
    Blender's ``Mesh.corner_normals`` gives it: smooth, flat, sharp edges and custom
    normals are already resolved there, which is what Cycles shades with.

    ``flat`` marks triangles shaded flat, as Cycles shades them: with the triangle's own
    geometric normal (each triangle of a bent quad or n-gon keeps its own), computed
    where the guides need it; their ``corner_normals`` are not used.

    A mesh of another frame only needs ``positions`` (motion is matched per vertex),
    so ``triangles`` and ``corner_normals`` may be left out there.
    """

    positions: np.ndarray
    triangles: np.ndarray | None = None
    corner_normals: np.ndarray | None = None
    flat: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        if self.triangles is None:
            self.triangles = np.zeros((0, 3), dtype=np.int64)
            self.corner_normals = np.zeros((0, 3, 3), dtype=np.float32)
            self.flat = np.zeros(0, dtype=bool)
            return
        self.triangles = np.asarray(self.triangles, dtype=np.int64).reshape(-1, 3)
        self.corner_normals = np.asarray(self.corner_normals, dtype=np.float32).reshape(-1, 3, 3)
        if self.corner_normals.shape[0] != self.triangles.shape[0]:
            raise ValueError("corner_normals must have one (3, 3) block per triangle")
        self.flat = (np.zeros(self.triangles.shape[0], dtype=bool) if self.flat is None
                     else np.asarray(self.flat, dtype=bool).reshape(-1))
        if self.flat.shape[0] != self.triangles.shape[0]:
            raise ValueError("flat must have one value per triangle")
        if self.triangles.size and (self.triangles.min() < 0 or self.triangles.max() >= self.positions.shape[0]):
            raise ValueError("triangle indices out of range")

    @property
    def vertex_count(self) -> int:
        return int(self.positions.shape[0])

    @property
    def triangle_count(self) -> int:
        return int(self.triangles.shape[0])


@dataclass
class Instance:
    """One placement of a mesh.

    ``key`` identifies the same placement across frames (object name, or instancer
    and persistent id for instances), which is how motion is matched per vertex.

    ``shared_mesh``: the mesh is placed more than once in the frame. Cycles then keeps
    it in object space and transforms the interpolated normal; a mesh placed once has
    its transform applied first, each corner normal transformed and renormalised
    before interpolation. Under non-uniform scale the two differ, so we follow suit.
    """

    key: Hashable
    mesh: Mesh
    matrix: np.ndarray
    name: str = ""
    shared_mesh: bool = False
    _world: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.matrix = np.asarray(self.matrix, dtype=np.float64).reshape(4, 4)

    def world_positions(self) -> np.ndarray:
        """The mesh's vertices placed in the world, computed once (an animation's frame
        t-1 is the previous render's frame t: its placements were already computed)."""
        if self._world is None:
            self._world = transform_points(self.matrix, self.mesh.positions)
        return self._world


@dataclass
class FrameGeometry:
    camera: Camera
    instances: list[Instance] = field(default_factory=list)
    # What the rasteriser saw from this frame's camera, kept by compute_guides: when the
    # same frame comes back as the next frame's previous one, it need not be drawn again.
    visibility: object = field(default=None, repr=False, compare=False)
    # The placed instances as read (keys and transforms, meshes aside): a later evaluation of
    # the same frame is checked against them without reading any mesh (``scene_capture``).
    placements: tuple = field(default=(), repr=False, compare=False)

    def by_key(self) -> dict:
        return {instance.key: instance for instance in self.instances}


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    flat = points.reshape(-1, 3)
    return (flat @ matrix[:3, :3].T + matrix[:3, 3]).reshape(points.shape)
