"""Snapshot an evaluated Blender scene into plain arrays for the guides.

This is the only place that reads geometry from Blender. It walks
``depsgraph.object_instances`` (so modifiers, geometry nodes, collection instances,
curves, text and metaballs all arrive as their evaluated meshes), and keys each
instance so the same surface can be matched across frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .guides import Camera, FrameGeometry, Instance, Mesh
from .guides.camera import inverse4

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
        view = inverse4(world)
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


def _face_of_triangle(mesh) -> np.ndarray:
    face_of_triangle = np.empty(len(mesh.loop_triangle_polygons), dtype=np.int32)
    mesh.loop_triangle_polygons.foreach_get("value", face_of_triangle)
    return face_of_triangle


def _bool_attribute(mesh, name: str, size: int):
    attribute = mesh.attributes.get(name)
    if attribute is None or attribute.data_type != "BOOLEAN":
        return None
    values = np.empty(size, dtype=bool)
    attribute.data.foreach_get("value", values)
    return values


# How Cycles shades a mesh (Blender's ``Mesh::normals_domain(true)``, which Cycles' sync
# calls): POINT = vertex normals on smooth faces, each triangle's own geometric normal on
# flat ones; FACE = every triangle flat; CORNER = Blender's corner normals everywhere.
POINT, FACE, CORNER = "POINT", "FACE", "CORNER"


def normals_domain(has_custom_normals: bool, sharp_edges, sharp_faces) -> str:
    """The normals domain Cycles uses, from the mesh's sharp flags (None: attribute absent)."""
    if has_custom_normals:
        return CORNER
    if sharp_faces is not None and sharp_faces.size and sharp_faces.all():
        return FACE
    if sharp_edges is not None and sharp_edges.size and sharp_edges.all():
        return FACE
    if sharp_edges is None or not sharp_edges.any():
        return POINT
    return CORNER


def quads_flipped(positions: np.ndarray, quads: np.ndarray) -> np.ndarray:
    """Which quads Blender splits along the 1-3 diagonal instead of 0-2.

    Blender's ``is_quad_flip_v3_first_third_fast`` in float32: the quad is flipped when
    corners 1 and 3 lie on the same side of the 0-2 diagonal."""
    p = positions.reshape(-1, 3)
    v1, v2, v3, v4 = (p[quads[:, k]] for k in range(4))
    d13 = v3 - v1
    return np.einsum("ij,ij->i", np.cross(v2 - v1, d13), np.cross(v4 - v1, d13)) > 0.0


class _Topology:
    """What stays fixed while a mesh only deforms: triangles, their corners and faces,
    and how each triangle is shaded."""

    def __init__(self, mesh, counts, corner_vertices, shading_key, sharp_edges, sharp_faces, positions):
        self.counts = counts
        self.corner_vertices = corner_vertices
        self.shading_key = shading_key
        triangle_count = len(mesh.loop_triangles)
        self.corners = np.empty(triangle_count * 3, dtype=np.int32)
        mesh.loop_triangles.foreach_get("loops", self.corners)
        self.triangles = corner_vertices[self.corners].reshape(-1, 3)
        self.face_of_triangle = _face_of_triangle(mesh)
        self.domain = normals_domain(mesh.has_custom_normals, sharp_edges, sharp_faces)
        if self.domain == FACE:
            self.flat = np.ones(triangle_count, dtype=bool)
        elif self.domain == POINT and sharp_faces is not None:
            self.flat = sharp_faces[self.face_of_triangle]
        else:
            self.flat = np.zeros(triangle_count, dtype=bool)
        # A quad's split, and an n-gon's triangulation, depend on the vertex positions.
        per_face = np.bincount(self.face_of_triangle, minlength=counts[2])
        self.has_ngons = bool((per_face > 2).any())
        quad_faces = np.flatnonzero(per_face == 2)
        starts = np.empty(counts[2], dtype=np.int32)
        mesh.polygons.foreach_get("loop_start", starts)
        self.quads = corner_vertices[starts[quad_faces][:, None] + np.arange(4)]
        self.flipped = quads_flipped(positions, self.quads)
        self.positions = positions
        self.last_mesh = None  # (positions, Mesh) last read

    def still_valid(self, positions) -> bool:
        """Blender would triangulate the mesh at ``positions`` the same way."""
        if np.array_equal(positions, self.positions):
            return True
        if self.has_ngons:
            return False
        return np.array_equal(quads_flipped(positions, self.quads), self.flipped)


class TopologyCache:
    """Mesh topology kept from one evaluated frame to the next.

    Reading triangle corners from Blender is the slowest part of reading a mesh. A
    mesh whose element counts, corner vertices, triangle-to-face map and sharp flags
    are those of last time has the same triangles, unless a quad's split or an n-gon's
    triangulation moved with its vertices, which is checked; so a deforming mesh only
    has its positions (and normals) read each frame. Anything else is read afresh.
    """

    def __init__(self):
        self._entries: dict = {}
        self._used: dict = {}

    def topology(self, key, mesh, positions) -> _Topology:
        counts = (len(mesh.vertices), len(mesh.loops), len(mesh.polygons), len(mesh.edges))
        corner_vertices = _corner_vertices(mesh)
        sharp_edges = _bool_attribute(mesh, "sharp_edge", counts[3])
        sharp_faces = _bool_attribute(mesh, "sharp_face", counts[2])
        shading_key = (mesh.has_custom_normals, _packed(sharp_edges), _packed(sharp_faces))
        entry = self._entries.get(key) if key is not None else None
        if entry is None or entry.counts != counts or entry.shading_key != shading_key \
                or not np.array_equal(entry.corner_vertices, corner_vertices) \
                or not np.array_equal(entry.face_of_triangle, _face_of_triangle(mesh)) \
                or not entry.still_valid(positions):
            entry = _Topology(mesh, counts, corner_vertices, shading_key, sharp_edges, sharp_faces, positions)
        if key is not None:
            self._entries[key] = self._used[key] = entry
        return entry

    def finish_render(self):
        """Keep only what the render used, so the cache never outgrows one scene."""
        self._entries, self._used = self._used, {}


topology_cache = TopologyCache()


def _mesh_arrays(mesh, positions_only: bool = False, cache_key=None) -> Mesh:
    positions = _positions(mesh)
    if positions_only:
        return Mesh(positions)
    topology = topology_cache.topology(cache_key, mesh, positions)
    # Same vertices, same topology and sharp flags: the same normals (custom normals can
    # be edited alone, so they are always read).
    last = topology.last_mesh
    if last is not None and not mesh.has_custom_normals and np.array_equal(last[0], positions):
        return last[1]
    result = Mesh(positions, topology.triangles, _shading_normals(mesh, topology), topology.flat)
    if cache_key is not None:
        topology.last_mesh = (positions, result)
    return result


def _packed(values) -> bytes:
    return b"" if values is None else np.packbits(values).tobytes()


def _shading_normals(mesh, topology: _Topology) -> np.ndarray:
    """Per-corner shading normals (T, 3, 3) of the smooth triangles, exactly as Cycles
    shades them (flat ones get their geometric normal later, see ``Mesh.flat``)."""
    if topology.domain == CORNER:
        normals = np.empty(len(mesh.loops) * 3, dtype=np.float32)
        mesh.corner_normals.foreach_get("vector", normals)
        return normals.reshape(-1, 3)[topology.corners].reshape(-1, 3, 3)
    if topology.domain == POINT:
        vertex_normals = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
        mesh.vertex_normals.foreach_get("vector", vertex_normals)
        return vertex_normals.reshape(-1, 3)[topology.triangles]
    return np.zeros((topology.triangles.shape[0], 3, 3), dtype=np.float32)


def _instance_key(instance):
    if instance.is_instance:
        parent = instance.parent.original.name if instance.parent else ""
        return ("instance", parent, tuple(instance.persistent_id))
    return ("object", instance.object.original.name)


def capture_frame(depsgraph, camera_object, width: int, height: int, positions_only_for=frozenset(),
                  unchanged: dict | None = None):
    """The evaluated scene as a :class:`FrameGeometry`, plus messages for the user.

    Instances whose key is in ``positions_only_for`` are read without triangles and
    normals: for the frames before and after, only vertex positions are needed.

    ``unchanged`` maps objects (by name) whose evaluated mesh is known to be the same as in
    another capture to that capture's :class:`Mesh` (:func:`unchanged_meshes`); they are not
    read, so Blender computes no deferred Subdivision for them.
    """
    camera = capture_camera(depsgraph, camera_object, width, height)
    unchanged = unchanged or {}
    instances: list[Instance] = []
    warnings: list[str] = []
    meshes: dict[tuple, Mesh | None] = {}  # evaluated data read once, however many instances use it
    users: dict = {}  # placements of each evaluated geometry, as Cycles counts them
    data_of: list = []
    skipped_invalid: list[str] = []
    placed: list[tuple] = []
    kept: dict = {}  # unchanged objects taken unread: name -> original object
    instanced: set = set()  # objects something else instances (their users must be counted by data)
    for instance in depsgraph.object_instances:
        obj = instance.object
        if obj.type not in GEOMETRY_TYPES:
            continue
        if not instance.show_self:
            continue
        name = obj.original.name
        if not instance.is_instance and name in unchanged and obj.original.library is None:
            data = ("unread", name)  # Object.data would compute a deferred Subdivision
            kept[name] = obj.original
        else:
            data = obj.data.as_pointer() if obj.type == "MESH" else obj.as_pointer()
            if instance.is_instance and name in unchanged:
                instanced.add(name)
        users[data] = users.get(data, 0) + 1
        if not getattr(obj, "visible_camera", True):
            continue
        matrix = np.array(instance.matrix_world, dtype=np.float64)
        key = _instance_key(instance)
        placed.append((key, matrix.tobytes()))
        if not np.all(np.isfinite(matrix)):
            skipped_invalid.append(obj.name)
            continue
        positions_only = key in positions_only_for
        cache_key = (data, positions_only)
        if cache_key not in meshes:
            if isinstance(data, tuple):
                mesh = unchanged[name]
            else:
                mesh = _read_mesh(obj, positions_only)
                if mesh is not None and not np.all(np.isfinite(mesh.positions)):
                    skipped_invalid.append(obj.name)
                    mesh = None
            meshes[cache_key] = mesh
        mesh = meshes[cache_key]
        if mesh is None or mesh.vertex_count == 0 or (not positions_only and mesh.triangle_count == 0):
            continue
        instances.append(Instance(key=key, mesh=mesh, matrix=matrix, name=obj.name))
        data_of.append(data)
    # An unchanged object that is also instanced elsewhere shares its evaluated mesh with
    # those instances: count them together, as Cycles does (this one read computes its mesh).
    for name in instanced & kept.keys():
        data = kept[name].evaluated_get(depsgraph).data.as_pointer()
        users[data] = users.get(data, 0) + users.pop(("unread", name))
        data_of = [data if entry == ("unread", name) else entry for entry in data_of]
    for instance, data in zip(instances, data_of):
        instance.shared_mesh = users[data] > 1
    if skipped_invalid:
        names = ", ".join(sorted(set(skipped_invalid))[:5])
        warnings.append(f"Skipped objects with invalid transforms or vertices (NaN or infinity): {names}")
    return FrameGeometry(camera=camera, instances=instances, placements=tuple(placed)), warnings


def unchanged_meshes(depsgraph, frame: FrameGeometry) -> dict:
    """Meshes of ``frame`` that the depsgraph's last evaluation (``frame_set``) left as they were.

    ``frame`` must be a capture of the same scene at the frame evaluated before. Blender
    re-evaluates an object's geometry at a frame change only if it depends on time (or on
    something that does) and lists it in ``Depsgraph.updates``; geometry not listed there
    is what it was. Only objects with a modifier that renders qualify: their evaluated mesh
    is their own (objects sharing a mesh and no modifiers share one evaluated mesh), and they
    are the ones worth it (a static subdivided character moved by its transform only)."""
    import bpy

    changed_objects, changed_data = set(), set()
    for update in depsgraph.updates:
        if not update.is_updated_geometry:
            continue
        original = getattr(update.id, "original", None) or update.id
        (changed_objects if isinstance(original, bpy.types.Object) else changed_data).add(original.name)
    found = {}
    for instance in frame.instances:
        kind, *rest = instance.key
        if kind != "object" or rest[0] in changed_objects or instance.mesh.triangle_count == 0:
            continue
        original = bpy.data.objects.get(rest[0])
        if (original is None or original.type != "MESH" or original.data is None
                or original.data.name in changed_data
                or not any(modifier.show_render for modifier in original.modifiers)):
            continue
        found[rest[0]] = instance.mesh
    return found


def placements(depsgraph) -> tuple:
    """What :func:`capture_frame` records as ``FrameGeometry.placements``, without reading a mesh.

    Touching an evaluated mesh (even ``Object.data``) makes Blender compute a Subdivision it
    deferred, the costliest part of reading a deforming frame; keys and transforms need none."""
    placed = []
    for instance in depsgraph.object_instances:
        obj = instance.object
        if obj.type in GEOMETRY_TYPES and instance.show_self and getattr(obj, "visible_camera", True):
            placed.append((_instance_key(instance), np.array(instance.matrix_world, dtype=np.float64).tobytes()))
    return tuple(placed)


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


def _same_camera(a, b) -> bool:
    return (np.array_equal(a.view, b.view) and np.array_equal(a.projection, b.projection)
            and (a.width, a.height, a.clip_start, a.clip_end) == (b.width, b.height, b.clip_start, b.clip_end))


def _same_geometry(a: FrameGeometry, b: FrameGeometry) -> bool:
    """Both captures hold the same camera and the same placed vertices, exactly."""
    if not (_same_camera(a.camera, b.camera) and len(a.instances) == len(b.instances)):
        return False
    return all(x.key == y.key and np.array_equal(x.matrix, y.matrix)
               and np.array_equal(x.mesh.positions, y.mesh.positions)
               for x, y in zip(a.instances, b.instances))


# Handlers that run between the frames of one render job: a script there may edit the scene.
BETWEEN_FRAMES_HANDLERS = ("render_pre", "render_post", "render_write", "render_stats", "frame_change_pre",
                           "frame_change_post", "composite_pre", "composite_post")
_SILK_PACKAGE = __name__.rsplit(".", 2)[0]  # "silk", or the installed extension's full package name


def scripts_between_frames() -> list[str]:
    """Handlers of other add-ons and scripts that run between the frames of a render job."""
    import bpy

    found = []
    for name in BETWEEN_FRAMES_HANDLERS:
        for function in getattr(bpy.app.handlers, name, ()):
            module = getattr(function, "__module__", None) or ""
            if module != _SILK_PACKAGE and not module.startswith(_SILK_PACKAGE + "."):
                found.append(f"{name}: {getattr(function, '__qualname__', repr(function))}")
    return found


@dataclass
class _LastRender:
    """What the last render of a job read, kept for the next one (:class:`MotionCache`)."""

    context: tuple
    generation: int
    frame: int
    current: FrameGeometry
    following: FrameGeometry
    following_in_full: bool  # t+1 read with triangles and normals, so the next render may take it as its t
    following_warnings: tuple


class MotionCache:
    """The frames the last render evaluated, reused by the next frame of an animation.

    Rendering frame t needs the scene at t-1, t and t+1; the render of t-1 has already
    evaluated t-1 and t. They are reused when the render is the next frame of the same
    render job (cleared when a job starts), nothing was edited since (any depsgraph
    update clears it), the scene, view layer, camera and size are the same, and frame t
    is what the last render captured as its t+1. Otherwise every frame is evaluated, as
    without the cache.

    Frame t is checked one of two ways. Where the last render read its t+1 in full (an
    animation render whose next frame is t+1), frame t is taken from it without reading
    any mesh, if the camera and every placed instance's key and transform are exactly
    those of last time (:func:`placements`): reading a deforming mesh is what costs, since
    Blender computes deferred Subdivisions then. Vertices are not compared there; with no
    edit (none in a background job without other scripts' handlers, any in the interface
    clears the cache) the same frame evaluates to the same vertices. Otherwise frame t is
    read and must match the kept t+1 exactly: camera, objects, placements and vertices.

    Blender runs no depsgraph update handler for edits a script makes between the frames
    of a background job (a ``render_post`` handler, say), and an edit that changes frame
    t-1 but leaves frame t exactly as it was would pass the check on frame t. So nothing is
    reused while another add-on or script has a handler that runs between frames
    (:func:`scripts_between_frames`).
    """

    def __init__(self):
        self.generation = 0  # bumped by every edit and every new render job
        self._stored = None
        self.reused = 0  # frames not evaluated thanks to the cache (for tests and benchmarks)
        self.reused_unread = 0  # of those, renders whose frame t was taken from the kept t+1 unread (likewise)
        self.returns_without_evaluating = 0  # renders that put the frame back without evaluating it (likewise)
        self._other_frames: dict = {}  # (context, frame, full) -> FrameGeometry: see keep_frame
        self.other_frames_reused = 0  # (for tests and benchmarks)

    def invalidate(self, *_args) -> None:
        self.generation += 1
        self._stored = None
        self._other_frames = {}

    def keep_frame(self, context, frame: int, full: bool, geometry: FrameGeometry, generation: int) -> None:
        """Keep a frame other than the rendered one that a render read (the shot's first frame,
        which every frame's hold to start reads), for the job's next renders; only if nothing was
        edited since ``generation`` (taken before reading it). The same conditions as for t-1 and
        t hold for reusing it: one job, nothing edited, no other script between the frames."""
        if generation != self.generation:
            return
        if len(self._other_frames) >= KEPT_OTHER_FRAMES:
            self._other_frames.pop(next(iter(self._other_frames)))
        self._other_frames[(context, frame, full)] = geometry

    def kept_frame(self, context, frame: int, full: bool) -> FrameGeometry | None:
        """A frame kept by :meth:`keep_frame`; with ``full`` False, one read in full serves as well."""
        for kind in ((True,) if full else (False, True)):
            found = self._other_frames.get((context, frame, kind))
            if found is not None:
                self.other_frames_reused += 1
                return found
        return None

    def store(self, context, generation, frame, current, following, following_in_full=False,
              following_warnings=()) -> None:
        self._stored = (None if following is None else
                        _LastRender(context, generation, frame, current, following, following_in_full,
                                    tuple(following_warnings)))

    def _kept(self, context, frame) -> _LastRender | None:
        stored = self._stored
        if stored is None or stored.context != context or stored.generation != self.generation \
                or stored.frame != frame - 1:
            return None
        return stored

    def previous_for(self, context, frame, current: FrameGeometry) -> FrameGeometry | None:
        """Last render's frame t as this one's t-1, if everything above holds."""
        stored = self._kept(context, frame)
        if stored is None or not _same_geometry(stored.following, current):
            return None
        self.reused += 1
        return stored.current

    def frames_for(self, context, frame, observe):
        """Last render's frames t and t+1 as this one's t-1 and t, with t+1's warnings, where
        t+1 was read in full and ``observe()`` (this frame's camera and placements, read
        without meshes, only then) gives exactly its camera and placements; else None."""
        stored = self._kept(context, frame)
        if stored is None or not stored.following_in_full:
            return None
        camera, placed = observe()
        following = stored.following
        if not (_same_camera(following.camera, camera) and following.placements == placed):
            return None
        self.reused += 1
        self.reused_unread += 1
        return stored.current, following, list(stored.following_warnings)


KEPT_OTHER_FRAMES = 4  # a shot's first frame, and a few that cadence and loops read again
motion_cache = MotionCache()


GREASE_PENCIL_DATA = ("grease_pencils", "grease_pencils_v3")  # grease pencil data (4.3-4.5 have both)


def evaluation_needed_after_render(scene) -> str:
    """Why the render must evaluate its own frame again after reading the next one ("" if it need not).

    ``RenderEngine.frame_set`` evaluates the render's depsgraph at the other frame and moves
    the user's scene there (its frame number, and its camera where markers bind one). After
    ``render()`` returns, Blender reads that depsgraph only to draw grease pencil over the
    result, then frees it (with Persistent Data it keeps it and evaluates it at the next
    frame). So where nothing else can see the scene meanwhile, putting the frame number back
    is all that returning needs, and evaluating frame t a second time (the render pipeline
    already did, before ``render()``) is wasted. That holds in background renders
    (``render()`` runs on the main thread) without the exceptions below (Freestyle, which
    renders its strokes from the scene next, gets the evaluated frame too, to be safe); an
    interactive render runs on a thread of its own, where only ``frame_set`` may touch the scene.
    """
    import bpy

    if not bpy.app.background:
        return "interactive render"
    if scene.render.use_freestyle:
        return "Freestyle renders its strokes after the engine"
    # Any grease pencil data at all (a look at each object would cost a lot in large scenes;
    # 4.2 also counts annotations here, which only makes this return more often).
    if any(len(getattr(bpy.data, name, ())) for name in GREASE_PENCIL_DATA):
        return "grease pencil draws from the render's depsgraph"
    if any(marker.camera is not None for marker in scene.timeline_markers):
        return "markers switch the camera"
    if bpy.app.handlers.frame_change_pre or bpy.app.handlers.frame_change_post:
        return "frame change handlers expect to see the rendered frame last"
    return ""


def capture_motion_frames(engine, depsgraph, camera_object, width: int, height: int):
    """The current, previous and next frame, evaluated with ``RenderEngine.frame_set``.

    The previous and current frames come from :data:`motion_cache` where they can. Always
    returns to the current frame, even when capturing fails: by evaluating it again, or,
    where :func:`evaluation_needed_after_render` allows, by putting the frame number back.
    """
    scene = depsgraph.scene
    frame, subframe = scene.frame_current, scene.frame_subframe
    generation = motion_cache.generation
    context = (scene.name, depsgraph.view_layer.name, camera_object.name, width, height, subframe)
    reusable = not scripts_between_frames()
    # The next render of this job reads this one's t+1 as its t: read it in full now, so
    # that it need not read its own (frame_step 1: other steps reuse nothing).
    next_reads_following = (reusable and bool(getattr(engine, "is_animation", False))
                            and scene.frame_step == 1 and frame < scene.frame_end)
    kept = None
    if reusable:
        kept = motion_cache.frames_for(context, frame, lambda: (
            capture_camera(depsgraph, camera_object, width, height), placements(depsgraph)))
    if kept is not None:
        previous, current, warnings = kept
    else:
        current, warnings = capture_frame(depsgraph, camera_object, width, height)
        previous = motion_cache.previous_for(context, frame, current) if reusable else None
    known = frozenset(instance.key for instance in current.instances)
    following = None
    following_warnings: list[str] = []
    moved = read = False
    try:
        if previous is None:
            moved = True
            engine.frame_set(frame - 1, subframe)
            try:
                previous, _ = capture_frame(depsgraph, camera_object, width, height, known,
                                            unchanged_meshes(depsgraph, current))
            except CaptureError as error:
                warnings.append(f"No motion from the previous frame: {error}")
        moved = True
        engine.frame_set(frame + 1, subframe)
        try:
            following, following_warnings = capture_frame(depsgraph, camera_object, width, height,
                                                           frozenset() if next_reads_following else known,
                                                           unchanged_meshes(depsgraph, current))
        except CaptureError as error:
            warnings.append(f"No motion to the next frame: {error}")
        read = True
    finally:
        if moved:
            _return_to(engine, scene, frame, subframe, evaluate=not read or bool(evaluation_needed_after_render(scene)))
        topology_cache.finish_render()
    motion_cache.store(context, generation, frame, current, following, next_reads_following, following_warnings)
    return current, previous, following, warnings


def _return_to(engine, scene, frame: int, subframe: float, evaluate: bool) -> None:
    if not evaluate:
        try:
            scene.frame_current = frame
            if scene.frame_subframe != subframe:
                scene.frame_subframe = subframe
        except (AttributeError, TypeError, ValueError, RuntimeError):  # should Blender refuse the write
            pass
        # Blender may refuse or clamp the frame (negative frames off in the preferences).
        if scene.frame_current == frame and scene.frame_subframe == subframe:
            motion_cache.returns_without_evaluating += 1
            return
    engine.frame_set(frame, subframe)


def register():
    import bpy

    bpy.app.handlers.persistent(_invalidate_motion)  # a file load must not drop it
    for handlers in _invalidating_handlers(bpy):
        if _invalidate_motion not in handlers:
            handlers.append(_invalidate_motion)


def unregister():
    import bpy

    for handlers in _invalidating_handlers(bpy):
        if _invalidate_motion in handlers:
            handlers.remove(_invalidate_motion)
    motion_cache.invalidate()


def _invalidating_handlers(bpy):
    """Edits, file loads, and the end of a render job (which frees the kept frames)."""
    handlers = bpy.app.handlers
    return (handlers.depsgraph_update_post, handlers.load_post, handlers.render_complete, handlers.render_cancel)


def new_job() -> None:
    """A render job starts: frames of earlier jobs are not reused."""
    motion_cache.invalidate()


def _invalidate_motion(*_args) -> None:
    motion_cache.invalidate()
