"""Snapshot an evaluated Blender scene into plain arrays for the guides.

This is the only place that reads geometry from Blender. It walks
``depsgraph.object_instances`` (so modifiers, geometry nodes, collection instances,
curves, text and metaballs all arrive as their evaluated meshes), and keys each
instance so the same surface can be matched across frames.
"""
from __future__ import annotations


import numpy as np

from .guides import Camera, FrameGeometry, Instance, Mesh

# Object types whose evaluated geometry can be turned into a mesh.
GEOMETRY_TYPES = {"MESH", "CURVE", "SURFACE", "META", "FONT"}


class CaptureError(Exception):
    """A problem with the scene the user must fix (shown in the render report)."""


def render_size(scene) -> tuple[int, int]:
    render = scene.render
    width = max(1, render.resolution_x * render.resolution_percentage // 100)
    height = max(1, render.resolution_y * render.resolution_percentage // 100)
    return width, height


def capture_camera(depsgraph, camera_object, width: int, height: int) -> Camera:
    scene = depsgraph.scene
    camera_eval = camera_object.evaluated_get(depsgraph)
    matrix = np.array(camera_eval.matrix_world, dtype=np.float64)
    if not np.all(np.isfinite(matrix)):
        raise CaptureError(f"The camera '{camera_object.name}' has an invalid transform (NaN or infinity)")
    # Blender renders with the camera's scale removed.
    world = np.array(camera_eval.matrix_world.normalized(), dtype=np.float64)
    try:
        view = np.linalg.inv(world)
    except np.linalg.LinAlgError as error:
        raise CaptureError(f"The camera '{camera_object.name}' has a degenerate transform") from error
    projection = np.array(
        camera_eval.calc_matrix_camera(
            depsgraph, x=width, y=height,
            scale_x=scene.render.pixel_aspect_x, scale_y=scene.render.pixel_aspect_y,
        ),
        dtype=np.float64,
    )
    data = camera_eval.data
    if getattr(data, "type", "PERSP") == "PANO":
        raise CaptureError("Panoramic cameras are not supported by Silk yet; use a perspective or orthographic camera")
    try:
        return Camera(
            view=view, projection=projection, width=width, height=height,
            clip_start=float(data.clip_start), clip_end=float(data.clip_end),
        )
    except ValueError as error:
        raise CaptureError(f"The camera '{camera_object.name}' cannot be used: {error}") from error


def _positions(mesh) -> np.ndarray:
    positions = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
    attribute = mesh.attributes.get("position")
    if attribute is not None and attribute.data_type == "FLOAT_VECTOR":
        attribute.data.foreach_get("vector", positions)  # the fast path
    else:
        mesh.vertices.foreach_get("co", positions)
    return positions


def _corner_vertices(mesh) -> np.ndarray:
    corner_vertices = np.empty(len(mesh.loops), dtype=np.int32)
    attribute = mesh.attributes.get(".corner_vert")
    if attribute is not None and attribute.domain == "CORNER":
        attribute.data.foreach_get("value", corner_vertices)
    else:
        mesh.loops.foreach_get("vertex_index", corner_vertices)
    return corner_vertices


def _bool_attribute(mesh, name: str, size: int):
    attribute = mesh.attributes.get(name)
    if attribute is None or attribute.data_type != "BOOLEAN":
        return None
    values = np.empty(size, dtype=bool)
    attribute.data.foreach_get("value", values)
    return values


class TopologyCache:
    """Triangles and normals of meshes seen in the last render, for reuse.

    Reading triangle corners from Blender is the slowest part of capturing a frame.
    A mesh whose object-space positions, corner vertices and triangle-to-face map are
    exactly those of last time has exactly the same triangulation and normals (even
    a quad's split depends only on its positions), which is the common case in an
    animation of rigid objects. Anything else is read afresh.
    """

    def __init__(self):
        self._entries: dict = {}
        self._used: dict = {}

    def lookup(self, key, positions, corner_vertices, face_of_triangle, shading_key):
        entry = self._entries.get(key)
        if entry is None:
            return None
        if not (entry["shading"] == shading_key
                and np.array_equal(entry["positions"], positions)
                and np.array_equal(entry["corner_vertices"], corner_vertices)
                and np.array_equal(entry["face_of_triangle"], face_of_triangle)):
            return None
        self._used[key] = entry
        return entry["mesh"]

    def store(self, key, positions, corner_vertices, face_of_triangle, shading_key, mesh):
        self._used[key] = {
            "positions": positions, "corner_vertices": corner_vertices,
            "face_of_triangle": face_of_triangle, "shading": shading_key, "mesh": mesh,
        }

    def finish_render(self):
        """Keep only what the render used, so the cache never outgrows one scene."""
        self._entries, self._used = self._used, {}


topology_cache = TopologyCache()


def _mesh_arrays(mesh, positions_only: bool = False, cache_key=None) -> Mesh:
    positions = _positions(mesh)
    if positions_only:
        return Mesh(positions)
    loop_triangles = mesh.loop_triangles
    triangle_count = len(loop_triangles)
    corner_vertices = _corner_vertices(mesh)
    face_of_triangle = np.empty(triangle_count, dtype=np.int32)
    mesh.loop_triangle_polygons.foreach_get("value", face_of_triangle)
    sharp_edges = _bool_attribute(mesh, "sharp_edge", len(mesh.edges))
    sharp_faces = _bool_attribute(mesh, "sharp_face", len(mesh.polygons))
    shading_key = (mesh.has_custom_normals, _packed(sharp_edges), _packed(sharp_faces))
    if mesh.has_custom_normals:
        cache_key = None  # custom normals can change while positions stay the same
    if cache_key is not None:
        found = topology_cache.lookup(cache_key, positions, corner_vertices, face_of_triangle, shading_key)
        if found is not None:
            return found
    corners = np.empty(triangle_count * 3, dtype=np.int32)
    loop_triangles.foreach_get("loops", corners)
    triangles = corner_vertices[corners]
    normals = _shading_normals(mesh, corners, triangles, face_of_triangle, sharp_edges, sharp_faces)
    result = Mesh(positions, triangles, normals)
    if cache_key is not None:
        topology_cache.store(cache_key, positions, corner_vertices, face_of_triangle, shading_key, result)
    return result


def _packed(values) -> bytes:
    return b"" if values is None else np.packbits(values).tobytes()


def _shading_normals(mesh, corners: np.ndarray, triangles: np.ndarray, face_of_triangle: np.ndarray,
                     sharp_edges, sharp_faces) -> np.ndarray:
    """Per-corner shading normals exactly as Cycles shades the mesh.

    Custom normals or sharp edges need Blender's corner normals. Otherwise Cycles
    shades smooth triangles with vertex normals (to which flat faces contribute as
    well) and flat triangles with their face normal, and so do we.
    """
    if mesh.has_custom_normals or (sharp_edges is not None and sharp_edges.any()):
        normals = np.empty(len(mesh.loops) * 3, dtype=np.float32)
        mesh.corner_normals.foreach_get("vector", normals)
        return normals.reshape(-1, 3)[corners].reshape(-1, 3, 3)
    vertex_normals = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
    mesh.vertex_normals.foreach_get("vector", vertex_normals)
    shading = vertex_normals.reshape(-1, 3)[triangles.reshape(-1, 3)]
    if sharp_faces is not None and sharp_faces.any():
        face_normals = np.empty(len(mesh.polygons) * 3, dtype=np.float32)
        mesh.polygon_normals.foreach_get("vector", face_normals)
        flat = sharp_faces[face_of_triangle]
        shading[flat] = face_normals.reshape(-1, 3)[face_of_triangle[flat]][:, None, :]
    return shading


def _instance_key(instance):
    if instance.is_instance:
        parent = instance.parent.original.name if instance.parent else ""
        return ("instance", parent, tuple(instance.persistent_id))
    return ("object", instance.object.original.name)


def capture_frame(depsgraph, camera_object, width: int, height: int, positions_only_for=frozenset()):
    """The evaluated scene as a :class:`FrameGeometry`, plus messages for the user.

    Instances whose key is in ``positions_only_for`` are read without triangles and
    normals: for the frames before and after, only vertex positions are needed.
    """
    camera = capture_camera(depsgraph, camera_object, width, height)
    instances: list[Instance] = []
    warnings: list[str] = []
    meshes: dict[tuple, Mesh | None] = {}  # evaluated data read once, however many instances use it
    skipped_invalid: list[str] = []
    for instance in depsgraph.object_instances:
        obj = instance.object
        if obj.type not in GEOMETRY_TYPES:
            continue
        if not instance.show_self:
            continue
        if not getattr(obj, "visible_camera", True):
            continue
        matrix = np.array(instance.matrix_world, dtype=np.float64)
        if not np.all(np.isfinite(matrix)):
            skipped_invalid.append(obj.name)
            continue
        key = _instance_key(instance)
        positions_only = key in positions_only_for
        if obj.type == "MESH":
            cache_key = (obj.data.as_pointer(), positions_only)
        else:
            cache_key = (obj.as_pointer(), positions_only)
        if cache_key not in meshes:
            mesh = _read_mesh(obj, positions_only)
            if mesh is not None and not np.all(np.isfinite(mesh.positions)):
                skipped_invalid.append(obj.name)
                mesh = None
            meshes[cache_key] = mesh
        mesh = meshes[cache_key]
        if mesh is None or mesh.vertex_count == 0 or (not positions_only and mesh.triangle_count == 0):
            continue
        instances.append(Instance(key=key, mesh=mesh, matrix=matrix, name=obj.name))
    if skipped_invalid:
        names = ", ".join(sorted(set(skipped_invalid))[:5])
        warnings.append(f"Skipped objects with invalid transforms or vertices (NaN or infinity): {names}")
    return FrameGeometry(camera=camera, instances=instances), warnings


def _read_mesh(obj, positions_only: bool) -> Mesh | None:
    if obj.type == "MESH":
        return _mesh_arrays(obj.data, positions_only, ("mesh", obj.original.name, obj.data.original.name))
    try:
        mesh = obj.to_mesh()
    except RuntimeError:
        return None
    try:
        if mesh is None:
            return None
        return _mesh_arrays(mesh, positions_only)
    finally:
        obj.to_mesh_clear()


def capture_motion_frames(engine, depsgraph, camera_object, width: int, height: int):
    """The current, previous and next frame, evaluated with ``RenderEngine.frame_set``.

    Always returns to the current frame, even when capturing fails.
    """
    scene = depsgraph.scene
    frame, subframe = scene.frame_current, scene.frame_subframe
    warnings: list[str] = []
    current, found = capture_frame(depsgraph, camera_object, width, height)
    warnings += found
    known = frozenset(instance.key for instance in current.instances)
    previous = following = None
    try:
        engine.frame_set(frame - 1, subframe)
        try:
            previous, _ = capture_frame(depsgraph, camera_object, width, height, known)
        except CaptureError as error:
            warnings.append(f"No motion from the previous frame: {error}")
        engine.frame_set(frame + 1, subframe)
        try:
            following, _ = capture_frame(depsgraph, camera_object, width, height, known)
        except CaptureError as error:
            warnings.append(f"No motion to the next frame: {error}")
    finally:
        engine.frame_set(frame, subframe)
        topology_cache.finish_render()
    return current, previous, following, warnings
