"""Independent references for the guides: Cycles renders and Blender's own ray casts."""
import math

import bpy
import numpy as np
from bpy_extras.object_utils import world_to_camera_view
from mathutils import Vector

from tests.support import exr
from tools.blender_env import set_multilayer_exr, use_cycles_reference


def render_passes(scene, path, engine):
    """Render the current frame with ``engine`` and read its passes back from a multilayer EXR."""
    if engine == "CYCLES":
        use_cycles_reference(scene)
    else:
        scene.render.engine = "SILK"
        scene.silk.mode = "GUIDES"
    set_multilayer_exr(scene)
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    return exr.read_passes(str(path) + ("" if str(path).endswith(".exr") else ".exr"))


def away_from_silhouettes(depth_a, depth_b, jump=0.05):
    """Pixels whose 3x3 neighbourhood is foreground in both and has no depth discontinuity."""
    foreground = (depth_a < 1e9) & (depth_b < 1e9)
    height, width = depth_a.shape
    padded_fg = np.pad(foreground, 1, constant_values=False)
    padded_depth = np.pad(depth_a, 1, mode="edge")
    keep = foreground.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            neighbour_fg = padded_fg[1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
            neighbour_depth = padded_depth[1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
            keep &= neighbour_fg & (np.abs(neighbour_depth - depth_a) <= jump * depth_a)
    return keep


def _frame_points(scene, camera):
    """Camera-space pixel-centre points on the frame plane and whether the camera is orthographic."""
    width = scene.render.resolution_x * scene.render.resolution_percentage // 100
    height = scene.render.resolution_y * scene.render.resolution_percentage // 100
    top_right, bottom_right, bottom_left, top_left = camera.data.view_frame(scene=scene)
    jj, ii = np.mgrid[0:height, 0:width]
    u = (ii + 0.5) / width
    v = (jj + 0.5) / height
    bl, br, tl = (np.array(p) for p in (bottom_left, bottom_right, top_left))
    points = bl + u[..., None] * (br - bl) + v[..., None] * (tl - bl)
    return points, camera.data.type == "ORTHO", width, height


def _object_matrices(depsgraph):
    return {
        inst.object.original.name: inst.matrix_world.copy()
        for inst in depsgraph.object_instances if not inst.is_instance
    }


def _surface_points(scene, frame):
    """Ray-cast every pixel centre at ``frame``: (row, column, object name, object-space point) or None."""
    camera = scene.camera
    scene.frame_set(frame)
    depsgraph = bpy.context.evaluated_depsgraph_get()
    points, ortho, width, height = _frame_points(scene, camera.evaluated_get(depsgraph))
    cam_matrix = camera.evaluated_get(depsgraph).matrix_world.normalized()
    hits = []
    for j in range(height):
        for i in range(width):
            p = Vector(points[j, i])
            if ortho:
                origin, direction = cam_matrix @ Vector((p.x, p.y, 0.0)), cam_matrix.to_3x3() @ Vector((0, 0, -1))
            else:
                origin, direction = cam_matrix.translation, (cam_matrix.to_3x3() @ p).normalized()
            found, location, _, _, obj, matrix = scene.ray_cast(depsgraph, origin, direction)
            hits.append((j, i, obj.original.name, matrix.inverted() @ location) if found else None)
    return hits, width, height


def raycast_vectors(scene, frame):
    """The Vector pass by following rigid surface points: (H, W, 4) rows top-down, NaN where no hit."""
    hits, width, height = _surface_points(scene, frame)
    vectors = np.full((height, width, 4), np.nan)
    positions = {}
    for other in (frame - 1, frame, frame + 1):
        scene.frame_set(other)
        depsgraph = bpy.context.evaluated_depsgraph_get()
        matrices = _object_matrices(depsgraph)
        cam = scene.camera.evaluated_get(depsgraph)
        for hit in hits:
            if hit is None:
                continue
            j, i, name, local = hit
            ndc = world_to_camera_view(scene, cam, matrices[name] @ local)
            positions[(other, j, i)] = (ndc.x * width, ndc.y * height)
    for hit in hits:
        if hit is None:
            continue
        j, i = hit[0], hit[1]
        (px, py), (nx, ny), (fx, fy) = (positions[(f, j, i)] for f in (frame - 1, frame, frame + 1))
        vectors[j, i] = (px - nx, py - ny, nx - fx, ny - fy)
    scene.frame_set(frame)
    return vectors[::-1]


def raycast_occlusion(scene, frame):
    """Occlusion at ``frame`` by ray casting: 1 where the surface point seen now was hidden
    from (or outside) the camera at ``frame - 1``. Rigid objects only (no instances).

    Returns an array, rows top-down; pixels without a hit are NaN.
    """
    camera = scene.camera
    hits, width, height = _surface_points(scene, frame)
    ortho = camera.data.type == "ORTHO"

    scene.frame_set(frame - 1)
    depsgraph = bpy.context.evaluated_depsgraph_get()
    matrices = _object_matrices(depsgraph)
    prev_camera = camera.evaluated_get(depsgraph)
    prev_matrix = prev_camera.matrix_world.normalized()
    forward = (prev_matrix.to_3x3() @ Vector((0, 0, -1))).normalized()
    occlusion = np.full((height, width), np.nan)
    for hit in hits:
        if hit is None:
            continue
        j, i, name, local = hit
        world = matrices[name] @ local
        ndc = world_to_camera_view(scene, prev_camera, world)
        if not (0 <= ndc.x < 1 and 0 <= ndc.y < 1 and ndc.z > prev_camera.data.clip_start):
            occlusion[j, i] = 1.0
            continue
        if ortho:
            origin = world - forward * (forward.dot(world - prev_matrix.translation))
        else:
            origin = prev_matrix.translation
        offset = world - origin
        distance = offset.length
        found, location, *_ = scene.ray_cast(depsgraph, origin, offset.normalized(), distance=distance * 1.001 + 1e-4)
        blocked = found and (location - origin).length < distance * (1 - 1e-3) - 1e-5
        occlusion[j, i] = 1.0 if blocked else 0.0
    scene.frame_set(frame)
    # Pixel rows from view_frame grow upward; return top-down like the EXR arrays.
    return occlusion[::-1]
