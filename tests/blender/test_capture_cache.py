"""The capture caches change nothing but the time: guides with them are the guides without.

- Topology: a deforming mesh keeps its triangles, corners and shading flags while only
  its vertices move, and is re-triangulated when a quad's split or an n-gon changes.
- Motion: an animation render reuses the last frame's t and t+1 as its t-1 and t (frame t
  without reading its meshes), and only within one render job with nothing edited.
"""
import math
import os

import bpy
import numpy as np
import pytest

from silk.engine import scene_capture
from tests.support import exr, scenes
from tools.blender_env import set_multilayer_exr


def deforming_scene():
    scene = scenes.reset(64, 48)
    scenes.add_camera(scene, location=(0, -8, 4.5), rotation=(math.radians(62), 0, 0))
    sea = scenes.add_mesh(scene, "grid", "Sea", x_subdivisions=12, y_subdivisions=8, size=7)
    wave = sea.modifiers.new("Wave", "WAVE")
    wave.height, wave.width, wave.speed = 0.4, 1.5, 0.2
    # A quad that folds over its 0-2 diagonal half way through (Blender then splits it 1-3),
    # and a warped n-gon that deforms (its triangulation may change with it).
    fold = bpy.data.meshes.new("Fold")
    fold.from_pydata([(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0)], [], [(0, 1, 2, 3)])
    folded = bpy.data.objects.new("Fold", fold)
    scene.collection.objects.link(folded)
    folded.location = (-2.5, 0, 1.5)
    folded.rotation_euler = (math.radians(70), 0, 0)
    folded.shape_key_add(name="Basis")
    pinch = folded.shape_key_add(name="Pinch")
    pinch.data[3].co = (0.9, 0.1, 0.3)  # corner 3 crosses the 0-2 diagonal
    scenes.keyframe(pinch, "value", [(1, 0.0), (10, 1.0)])
    disc = scenes.add_mesh(scene, "circle", "Disc", location=(2.2, 0.5, 1.5), vertices=9, radius=1.0,
                           fill_type="NGON", rotation=(math.radians(70), 0, 0))
    disc.shape_key_add(name="Basis")
    dent = disc.shape_key_add(name="Dent")
    dent.data[4].co.x *= 0.1
    dent.data[4].co.y *= 0.1
    dent.data[4].co.z = 0.4
    scenes.keyframe(dent, "value", [(1, 0.0), (10, 1.0)])
    # A smooth blob whose Wave runs before a live Subdivision: Blender defers that last
    # Subdivision until the mesh is read, which an animation's frame t then skips.
    blob = scenes.add_mesh(scene, "ico_sphere", "Blob", location=(0.3, 1.5, 1.2), smooth=True, subdivisions=2,
                           radius=0.8)
    blob_wave = blob.modifiers.new("Wave", "WAVE")
    blob_wave.height, blob_wave.width, blob_wave.speed = 0.2, 0.5, 0.15
    blob.modifiers.new("Subdivision", "SUBSURF").render_levels = 1
    return scene


def test_cached_topology_is_what_blender_triangulates_every_frame(silk):
    scene = deforming_scene()
    cache = scene_capture.TopologyCache()
    kept = {}
    for frame in range(1, 11):
        scene.frame_set(frame)
        depsgraph = bpy.context.evaluated_depsgraph_get()
        for name in ("Sea", "Fold", "Disc"):
            mesh = bpy.data.objects[name].evaluated_get(depsgraph).data
            positions = scene_capture._positions(mesh)
            topology = cache.topology(name, mesh, positions)
            kept.setdefault(name, set()).add(id(topology))
            fresh = scene_capture.TopologyCache().topology(name, mesh, positions)  # read afresh
            assert np.array_equal(topology.triangles, fresh.triangles), (name, frame)
            assert np.array_equal(topology.corners, fresh.corners), (name, frame)
            assert np.array_equal(topology.flat, fresh.flat), (name, frame)
            assert np.array_equal(scene_capture._shading_normals(mesh, topology),
                                  scene_capture._shading_normals(mesh, fresh)), (name, frame)
        cache.finish_render()
    assert len(kept["Sea"]) == 1  # read once, kept while the wave moved every vertex
    assert len(kept["Fold"]) == 2  # re-read once: when the quad's split flipped
    # Blender really did split the folded quad the other way at the end.
    scene.frame_set(1)
    start = bpy.data.objects["Fold"].evaluated_get(bpy.context.evaluated_depsgraph_get()).data
    split_before = {tuple(sorted(t.vertices)) for t in start.loop_triangles}
    scene.frame_set(10)
    end = bpy.data.objects["Fold"].evaluated_get(bpy.context.evaluated_depsgraph_get()).data
    assert {tuple(sorted(t.vertices)) for t in end.loop_triangles} != split_before


def _render_animation(scene, folder, first, last):
    scene.render.engine = "SILK"
    scene.silk.mode = "GUIDES"
    set_multilayer_exr(scene)
    scene.frame_start, scene.frame_end = first, last
    scene.render.filepath = str(folder / "f_")
    bpy.ops.render.render(animation=True)
    return {frame: exr.read_passes(str(folder / f"f_{frame:04d}.exr")) for frame in range(first, last + 1)}


def assert_single_render_matches(scene, folder, animated, frame):
    """Frame ``frame`` rendered on its own (F12) has exactly the guides the animation wrote."""
    scene.frame_set(frame)
    scene.render.filepath = str(folder / f"single_{frame}.exr")
    bpy.ops.render.render(write_still=True)
    single = exr.read_passes(str(folder / f"single_{frame}.exr"))
    for name in ("Depth", "Normal", "Vector", "Occlusion"):
        assert np.array_equal(animated[frame][name], single[name]), (frame, name)


def test_an_animation_reuses_frames_and_gets_the_guides_of_single_renders(silk, tmp_path):
    scene = deforming_scene()
    before = scene_capture.motion_cache.reused
    unread = scene_capture.motion_cache.reused_unread
    animated = _render_animation(scene, tmp_path, 3, 6)
    assert scene_capture.motion_cache.reused - before == 3  # frames 4, 5 and 6 reused t-1 and t
    assert scene_capture.motion_cache.reused_unread - unread == 3  # ... without reading frame t's meshes
    assert scene_capture.motion_cache._stored is None  # the kept frames are freed when the job ends
    for frame in (3, 5, 6):
        before = scene_capture.motion_cache.reused
        assert_single_render_matches(scene, tmp_path, animated, frame)
        assert scene_capture.motion_cache.reused == before  # separate renders never reuse
    assert np.abs(animated[5]["Vector"]).max() > 0.5  # it moves


def static_and_driven_scene():
    """The deforming scene plus meshes whose modifiers Blender re-evaluates, or not, at a frame change:

    - Statue: a subdivided Suzanne moved by its transform only (its mesh never changes), also
      placed a second time, non-uniformly scaled, through a collection instance;
    - Twisted: a subdivided cube twisted around an empty that turns (its mesh changes
      though nothing of its own is animated);
    - Sea, Blob (Wave) and Fold, Disc (shape keys) change by their own animation."""
    scene = deforming_scene()
    props = bpy.data.collections.new("Props")
    scene.collection.children.link(props)
    statue = scenes.add_mesh(scene, "monkey", "Statue", smooth=True, size=0.8)
    for collection in list(statue.users_collection):
        collection.objects.unlink(statue)
    props.objects.link(statue)
    statue.modifiers.new("Subdivision", "SUBSURF").render_levels = 1
    scenes.keyframe(statue, "location", [(1, (-1.2, -1.5, 1.4)), (10, (-0.4, -1.0, 1.6))])
    copy = bpy.data.objects.new("Copies", None)
    copy.instance_type, copy.instance_collection = "COLLECTION", props
    copy.location, copy.scale = (2.4, -0.5, -0.2), (1.4, 0.7, 1.0)
    scene.collection.objects.link(copy)
    pivot = bpy.data.objects.new("Pivot", None)
    scene.collection.objects.link(pivot)
    pivot.location = (1.0, -2.5, 0.8)
    scenes.keyframe(pivot, "rotation_euler", [(1, (0.0, 0.0, 0.0)), (10, (0.0, 0.0, math.radians(60)))])
    twisted = scenes.add_mesh(scene, "cube", "Twisted", location=(1.0, -2.5, 0.8), size=0.8)
    twisted.modifiers.new("Subdivision", "SUBSURF").render_levels = 2
    twist = twisted.modifiers.new("Twist", "SIMPLE_DEFORM")
    twist.deform_method, twist.angle, twist.origin = "TWIST", math.radians(40), pivot
    return scene


def test_meshes_blender_did_not_re_evaluate_are_not_read_again_and_guides_stay_exact(silk, tmp_path,
                                                                                  monkeypatch):
    scene = static_and_driven_scene()
    taken = []
    unchanged_meshes = scene_capture.unchanged_meshes

    def record(depsgraph, frame):
        found = unchanged_meshes(depsgraph, frame)
        taken.append(set(found))
        return found

    monkeypatch.setattr(scene_capture, "unchanged_meshes", record)
    animated = _render_animation(scene, tmp_path, 3, 6)
    assert taken and all(names == {"Statue"} for names in taken), taken  # Twisted and the rest change
    monkeypatch.setattr(scene_capture, "unchanged_meshes", lambda *_args: {})  # read every mesh instead
    for frame in (3, 4, 6):
        assert_single_render_matches(scene, tmp_path, animated, frame)
    # The statue is placed twice (itself and through the collection instance), so it counts
    # as a shared mesh whether read or taken unread.
    scene.frame_set(5)
    depsgraph = bpy.context.evaluated_depsgraph_get()
    read = scene_capture.capture_frame(depsgraph, scene.camera, 64, 48)[0]
    statues = [instance for instance in read.instances if instance.name == "Statue"]
    assert len(statues) == 2 and all(instance.shared_mesh for instance in statues)
    unread = scene_capture.capture_frame(depsgraph, scene.camera, 64, 48,
                                         unchanged={"Statue": statues[0].mesh})[0]
    assert [(i.key, i.shared_mesh) for i in unread.instances] == [(i.key, i.shared_mesh) for i in read.instances]


def test_any_edit_drops_the_reusable_frames(silk):
    scene = deforming_scene()
    scene.frame_set(4)
    generation = scene_capture.motion_cache.generation
    bpy.data.objects["Sea"].modifiers["Wave"].height = 0.2
    bpy.context.view_layer.update()
    assert scene_capture.motion_cache.generation > generation


# Edits made between the frames of one render job, after the frame named: a moved object, a
# changed modifier, a changed camera, and a keyframe moved at frame 6 only, which changes
# frame 6 (frame 7's t-1) but leaves frame 7 exactly as it was. A script's render_post handler
# makes them, where Blender runs no depsgraph update handler (background render).
def _edit_after(frame):
    if frame == 3:
        bpy.data.objects["Disc"].location.z += 0.3
    elif frame == 4:
        bpy.data.objects["Sea"].modifiers["Wave"].height = 0.15
    elif frame == 5:
        bpy.data.objects["Camera"].data.lens = 60.0
        bpy.data.objects["Camera"].location.x += 0.4
    elif frame == 6:
        for fcurve in scenes._fcurves(bpy.data.objects["Buoy"]):
            for point in fcurve.keyframe_points:
                if fcurve.array_index == 2 and point.co.x == 6:
                    point.co.y += 0.5
            fcurve.update()


def _scene_with_buoy():
    scene = deforming_scene()
    buoy = scenes.add_mesh(scene, "cube", "Buoy", size=0.6)
    scenes.keyframe(buoy, "location", [(frame, (-1.0 + 0.3 * frame, -1.0, 0.8)) for frame in range(2, 10)])
    return scene


def test_guides_follow_edits_made_between_the_frames_of_one_job(silk, tmp_path):
    scene = _scene_with_buoy()

    def edit(rendered, *_args):
        _edit_after(rendered.frame_current)

    bpy.app.handlers.render_post.append(edit)
    try:
        assert "render_post: " + edit.__qualname__ in scene_capture.scripts_between_frames()
        before = scene_capture.motion_cache.reused
        animated = _render_animation(scene, tmp_path, 3, 7)
    finally:
        bpy.app.handlers.render_post.remove(edit)
    # A script runs between the frames, so nothing is reused: frame 7 would pass the check of
    # its frame t, but its t-1 changed.
    assert scene_capture.motion_cache.reused == before

    scene = _scene_with_buoy()  # the same scene afresh, edited as the job went, rendered frame by frame
    scene.render.engine = "SILK"
    scene.silk.mode = "GUIDES"
    set_multilayer_exr(scene)
    for frame in range(3, 8):
        assert_single_render_matches(scene, tmp_path, animated, frame)
        _edit_after(frame)
    assert not np.array_equal(animated[5]["Depth"], animated[6]["Depth"])  # the camera edit shows


def test_only_other_add_ons_handlers_count_as_scripts_between_frames(silk):
    assert scene_capture.scripts_between_frames() == []  # Silk's own handlers edit no geometry

    def note(*_args):
        pass

    bpy.app.handlers.frame_change_pre.append(note)
    try:
        assert scene_capture.scripts_between_frames() == ["frame_change_pre: " + note.__qualname__]
    finally:
        bpy.app.handlers.frame_change_pre.remove(note)


def test_frame_t_that_is_not_the_last_renders_t_plus_one_reuses_nothing(silk):
    scene = deforming_scene()
    camera = scene.camera
    frames = {}
    for frame in (4, 5, 6):
        scene.frame_set(frame)
        frames[frame] = scene_capture.capture_frame(bpy.context.evaluated_depsgraph_get(), camera, 64, 48)[0]
    cache = scene_capture.MotionCache()
    context = ("Scene", "ViewLayer", camera.name, 64, 48, 0.0)
    cache.store(context, cache.generation, 4, frames[4], frames[5])
    assert cache.previous_for(context, 5, frames[6]) is None  # frame 5 is not what was read as 5
    assert cache.previous_for(("Other",) + context[1:], 5, frames[5]) is None
    assert cache.previous_for(context, 6, frames[5]) is None
    assert cache.previous_for(context, 5, frames[5]) is frames[4]
    cache.invalidate()
    assert cache.previous_for(context, 5, frames[5]) is None


def test_frame_t_is_taken_unread_only_from_a_full_t_plus_one_with_the_same_camera_and_placements(silk):
    scene = deforming_scene()
    camera = scene.camera
    frames = {}
    for frame in (4, 5):
        scene.frame_set(frame)
        frames[frame] = scene_capture.capture_frame(bpy.context.evaluated_depsgraph_get(), camera, 64, 48)[0]
    depsgraph = bpy.context.evaluated_depsgraph_get()
    placed = scene_capture.placements(depsgraph)
    assert placed == frames[5].placements
    assert {key for key, _ in placed} >= {("object", name) for name in ("Sea", "Fold", "Disc", "Blob")}
    seen = scene_capture.capture_camera(depsgraph, camera, 64, 48)
    cache = scene_capture.MotionCache()
    context = ("Scene", "ViewLayer", camera.name, 64, 48, 0.0)
    cache.store(context, cache.generation, 4, frames[4], frames[5], True, ["kept warning"])
    assert cache.frames_for(context, 6, lambda: (seen, placed)) is None  # not the next frame
    assert cache.frames_for(context[:3] + (65,) + context[4:], 5, lambda: (seen, placed)) is None
    moved = tuple((key, np.zeros(16).tobytes() if key == ("object", "Blob") else matrix) for key, matrix in placed)
    assert cache.frames_for(context, 5, lambda: (seen, moved)) is None  # an object moved
    assert cache.frames_for(context, 5, lambda: (seen, placed[1:])) is None  # an object is gone
    lens = scene_capture.capture_camera(depsgraph, camera, 64, 48)
    lens.projection[0, 0] *= 1.1
    assert cache.frames_for(context, 5, lambda: (lens, placed)) is None  # the camera changed
    assert cache.reused == cache.reused_unread == 0
    previous, current, warnings = cache.frames_for(context, 5, lambda: (seen, placed))
    assert previous is frames[4] and current is frames[5] and warnings == ["kept warning"]
    assert cache.reused == cache.reused_unread == 1
    cache.store(context, cache.generation, 4, frames[4], frames[5], False)  # t+1 read as positions only
    assert cache.frames_for(context, 5, lambda: pytest.fail("frame t observed with nothing to take")) is None
    assert cache.previous_for(context, 5, frames[5]) is frames[4]  # frame t read and compared instead
    cache.store(context, cache.generation, 4, frames[4], frames[5], True)
    # Other frames a render read (the shot's first, for hold to start): kept by what they hold.
    cache.keep_frame(context, 1, False, frames[4], cache.generation)
    assert cache.kept_frame(context, 1, False) is frames[4] and cache.kept_frame(context, 1, True) is None
    cache.keep_frame(context, 2, True, frames[5], cache.generation)
    assert cache.kept_frame(context, 2, False) is frames[5]  # read in full serves for positions too
    cache.keep_frame(context, 3, True, frames[5], cache.generation - 1)  # something was edited meanwhile
    assert cache.kept_frame(context, 3, True) is None
    cache.invalidate()
    assert cache.frames_for(context, 5, lambda: (seen, placed)) is None
    assert cache.kept_frame(context, 1, False) is None


def test_a_background_render_puts_back_the_frame_without_evaluating_it_again(silk, tmp_path):
    scene = deforming_scene()
    scene.render.engine = "SILK"
    scene.silk.mode = "GUIDES"
    scene.frame_set(5)
    camera = scene.camera
    assert scene_capture.evaluation_needed_after_render(scene) == ""
    skipped = scene_capture.motion_cache.returns_without_evaluating
    scene.render.filepath = str(tmp_path / "still.png")
    bpy.ops.render.render(write_still=True)
    assert scene_capture.motion_cache.returns_without_evaluating == skipped + 1
    assert (scene.frame_current, scene.frame_subframe, scene.camera) == (5, 0.0, camera)
    assert (tmp_path / "still.png").exists()


def test_the_render_evaluates_its_frame_again_where_something_reads_it_afterwards(silk, tmp_path):
    scene = deforming_scene()
    scene.render.engine = "SILK"
    scene.silk.mode = "GUIDES"
    scene.render.filepath = str(tmp_path / "f_")
    scene.frame_start = scene.frame_end = 5
    camera = scene.camera
    after_render = []  # what the rest of Blender's pipeline sees once Silk's render() returned

    def look(rendered, *_args):
        after_render.append((rendered.frame_current, rendered.camera.name, list(seen)))

    seen = []

    def watch(changed, *_args):
        seen.append(changed.frame_current)

    # A marker binds another camera from frame 6: frame_set(6) switches to it, and only
    # evaluating frame 5 again switches back.
    other = bpy.data.objects.new("Other", bpy.data.cameras.new("Other"))
    scene.collection.objects.link(other)
    scene.timeline_markers.new("cut", frame=6).camera = other
    scene.timeline_markers.new("start", frame=1).camera = camera
    assert "camera" in scene_capture.evaluation_needed_after_render(scene)
    skipped = scene_capture.motion_cache.returns_without_evaluating
    bpy.app.handlers.render_post.append(look)
    try:
        bpy.ops.render.render(animation=True)
        assert after_render[-1][:2] == (5, camera.name)
        for marker in list(scene.timeline_markers):
            scene.timeline_markers.remove(marker)

        # A frame change handler last sees the rendered frame, as it would without Silk.
        bpy.app.handlers.frame_change_post.append(watch)
        try:
            assert "handlers" in scene_capture.evaluation_needed_after_render(scene)
            bpy.ops.render.render(animation=True)
        finally:
            bpy.app.handlers.frame_change_post.remove(watch)
    finally:
        bpy.app.handlers.render_post.remove(look)
    assert 6 in after_render[-1][2] and after_render[-1][2][-1] == 5
    assert scene_capture.motion_cache.returns_without_evaluating == skipped

    scene.render.use_freestyle = True
    assert "Freestyle" in scene_capture.evaluation_needed_after_render(scene)
    scene.render.use_freestyle = False
    strokes = bpy.data.objects.new("Strokes", bpy.data.grease_pencils.new("Strokes"))
    scene.collection.objects.link(strokes)
    assert strokes.type in ("GPENCIL", "GREASEPENCIL")  # 4.2's and 4.3+'s grease pencil objects
    assert "grease pencil" in scene_capture.evaluation_needed_after_render(scene)


def test_a_frame_the_scene_will_not_take_back_is_evaluated_instead(silk, tmp_path):
    scene = deforming_scene()  # factory preferences: negative frames off
    scene.render.engine = "SILK"
    scene.silk.mode = "GUIDES"
    scene.render.filepath = str(tmp_path / "still.png")
    scene.frame_set(-3)  # a script may go there; setting frame_current would clamp it to 0
    edit = bpy.context.preferences.edit
    assert not edit.use_negative_frames
    skipped = scene_capture.motion_cache.returns_without_evaluating
    bpy.ops.render.render(write_still=True)
    assert scene.frame_current == -3  # put back by evaluating it
    assert scene_capture.motion_cache.returns_without_evaluating == skipped
    edit.use_negative_frames = True
    try:
        bpy.ops.render.render(write_still=True)
        assert scene.frame_current == -3
        assert scene_capture.motion_cache.returns_without_evaluating == skipped + 1  # now it takes it back
    finally:
        edit.use_negative_frames = False
    assert (tmp_path / "still.png").exists()
