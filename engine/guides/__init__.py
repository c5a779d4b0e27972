"""Exact scene guides: depth, normals, motion vectors and occlusion.

Pure numpy. The Blender layer snapshots the scene into :class:`FrameGeometry`
objects (one per evaluated frame) and :func:`compute_guides` turns them into
per-pixel guides with Cycles' conventions.
"""
from .camera import Camera
from .geometry import FrameGeometry, Instance, Mesh
from .compute import BACKGROUND_DEPTH, GuideSet, compute_guides
from .raster import rasterize_triangles

__all__ = [
    "BACKGROUND_DEPTH",
    "Camera",
    "FrameGeometry",
    "GuideSet",
    "Instance",
    "Mesh",
    "compute_guides",
    "rasterize_triangles",
]
