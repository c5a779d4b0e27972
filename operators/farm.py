"""Operators for render farms (see docs/farm.md).

On a farm node, the Silk Shots job type runs Blender with ``silk.farm_prepare`` before the
animation render and ``silk.farm_finish`` after it; on the artist's machine,
``silk.farm_save_job_type`` puts the job type where the Flamenco Manager reads it and
``silk.farm_load_take`` brings a farm job's frames into the sequencer as a take.
"""
from __future__ import annotations

import os
import shutil

import bpy
from bpy.props import BoolProperty, IntProperty, StringProperty

from .. import farm
from ..bridge.client import WorkerUnavailable
from ..engine import farm as farm_plan
from ..engine import diffusion_job, job_settings, render_engine, takes, worker_link
from ..ui import preferences


class SILK_OT_farm_shots(bpy.types.Operator):
    bl_idname = "silk.farm_shots"
    bl_label = "List Farm Shots"
    bl_description = "Report the scene's shots as a farm renders them: one task per shot, long shots in chunks"

    max_frames: IntProperty(name="Max Frames per Task", default=0, min=0,
                            description="Split shots longer than this into chunks that run in order (0: never)")

    # What Flamenco's Silk Shots job type evaluates at submission, reachable without knowing the
    # extension's package name: bpy.types.SILK_OT_farm_shots.as_json(scene, max_frames).
    as_json = staticmethod(farm.shots_json)

    def execute(self, context):
        try:
            shots = farm.shots(context.scene, self.max_frames)
        except farm_plan.FarmPlanError as error:
            self.report({"ERROR"}, f"Silk: {error}")
            return {"CANCELLED"}
        parts = [f"{shot.start}-{shot.end}" + (f" ({len(shot.chunks)} chunks)" if len(shot.chunks) > 1 else "")
                 for shot in shots]
        self.report({"INFO"}, f"Silk: {len(shots)} shot{'s' if len(shots) != 1 else ''}: {', '.join(parts)}")
        return {"FINISHED"}


class SILK_OT_farm_prepare(bpy.types.Operator):
    bl_idname = "silk.farm_prepare"
    bl_label = "Prepare Farm Task"
    bl_description = ("On a farm node, before rendering a shot's frames: never repaint a finished frame, and fail "
                      "at once when this machine cannot run Silk's worker")

    keep_loop: BoolProperty(name="Keep Loop", default=True,
                            description="Off for every chunk of a shot but its last: a looping shot repaints its "
                                        "first frames after its last frame only")

    def execute(self, context):
        scene = context.scene
        if scene.render.engine != "SILK":
            self.report({"ERROR"}, f"Silk: the scene '{scene.name}' renders with {scene.render.engine}, not Silk: "
                                   "is the Silk extension installed and enabled for the user this node renders as?")
            return {"CANCELLED"}
        if scene.render.is_movie_format:
            self.report({"ERROR"}, "Silk: farm tasks write image files; choose an image format in the Output "
                                   "properties")
            return {"CANCELLED"}
        try:
            config = worker_link.worker_config()
        except WorkerUnavailable as error:
            self.report({"ERROR"}, f"Silk: this node cannot run the diffusion worker: {error}")
            return {"CANCELLED"}
        render = scene.render
        # A frame whose file exists is finished (its painting is beside it): skip it, whether an
        # earlier chunk or this task before its node died painted it. No placeholder files: a
        # node that dies would leave an empty "finished" frame.
        render.use_overwrite = False
        render.use_placeholder = False
        if not self.keep_loop:
            scene.silk.use_loop = False
        where = config.remote and f"remote worker {config.remote[0]}:{config.remote[1]}" or config.python
        device, _precision = worker_link.device_setting()
        self.report({"INFO"}, f"Silk farm task: worker {where}, device {device}, CUDA_VISIBLE_DEVICES="
                              f"{os.environ.get('CUDA_VISIBLE_DEVICES', '(all)')}, model cache "
                              f"{config.env.get('SILK_MODEL_CACHE') or os.environ.get('SILK_MODEL_CACHE') or '(default)'}")
        return {"FINISHED"}


class SILK_OT_farm_finish(bpy.types.Operator):
    bl_idname = "silk.farm_finish"
    bl_label = "Finish Farm Task"
    bl_description = ("On a farm node, after rendering: fail unless every frame of the chunk exists (so the manager "
                      "retries it), then record the chunk beside its frames for the take")

    first: IntProperty(name="First Frame")
    last: IntProperty(name="Last Frame")

    def execute(self, context):
        scene = context.scene
        files = {frame: scene.render.frame_path(frame=frame) for frame in range(self.first, self.last + 1)}
        missing = [frame for frame, path in files.items() if not os.path.isfile(path)]
        if missing:
            errors = [message for level, message in render_engine.last_reports if level == "ERROR"]
            self.report({"ERROR"}, f"Silk: frames {_ranges(missing)} of {self.first}-{self.last} were not rendered"
                                   + (f" ({errors[-1]})" if errors else "") + "; the task fails so that it is retried")
            return {"CANCELLED"}
        folder = os.path.dirname(files[self.first])
        path = farm_plan.write_record(folder, scene.name, _label(scene), farm_plan.Chunk(self.first, self.last), files)
        self.report({"INFO"}, f"Silk: frames {self.first}-{self.last} finished; recorded in {path}")
        return {"FINISHED"}


class SILK_OT_farm_load_take(bpy.types.Operator):
    bl_idname = "silk.farm_load_take"
    bl_label = "Load Farm Take"
    bl_description = "Put a Silk farm job's frames into the sequencer as a take (choose the job's output folder)"

    directory: StringProperty(name="Job Output Folder", subtype="DIR_PATH")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        folder = bpy.path.abspath(self.directory).rstrip("/\\") or self.directory
        try:
            take = farm_plan.read_take(folder)
        except (OSError, farm_plan.FarmPlanError) as error:
            self.report({"ERROR"}, f"Silk: {error}")
            return {"CANCELLED"}
        scene = bpy.data.scenes.get(take.scene) or context.scene
        strip = takes.place_take(scene, take.label or "farm", take.start, take.files, [take.start, take.end],
                                 os.path.abspath(folder))
        if strip is None:
            self.report({"ERROR"}, f"Silk: the first frame of the job in {folder} is not there yet")
            return {"CANCELLED"}
        if take.missing:
            self.report({"WARNING"}, f"Silk: frames {_ranges(take.missing)} are not finished yet (is the job still "
                                     "running?); the take stops before them. Load it again when the job ends")
        else:
            self.report({"INFO"}, f"Silk: frames {take.start}-{take.end} loaded as '{strip.name}' in the scene "
                                  f"'{takes.editing_scene_name(scene.name)}'")
        return {"FINISHED"}


class SILK_OT_farm_save_job_type(bpy.types.Operator):
    bl_idname = "silk.farm_save_job_type"
    bl_label = "Save Flamenco Job Type"
    bl_description = ("Save Silk's Flamenco job type (silk_shots.js) into the folder chosen in Silk's preferences: "
                      "the Flamenco Manager's scripts folder")

    def execute(self, context):
        prefs = preferences.preferences()
        folder = bpy.path.abspath(getattr(prefs, "flamenco_scripts_folder", "") if prefs else "")
        if not folder:
            self.report({"ERROR"}, "Silk: choose the Flamenco Manager's scripts folder in Silk's preferences first")
            return {"CANCELLED"}
        target = os.path.join(folder, os.path.basename(farm.JOB_TYPE_FILE))
        try:
            os.makedirs(folder, exist_ok=True)
            shutil.copyfile(farm.JOB_TYPE_FILE, target)
        except OSError as error:
            self.report({"ERROR"}, f"Silk: could not save the job type to {target}: {error.strerror or error}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Silk: saved the '{farm.JOB_TYPE_NAME}' job type to {target}; restart the Flamenco "
                              "Manager, then refresh the job types in Flamenco's add-on")
        return {"FINISHED"}


def _label(scene) -> str:
    """The take's settings, as a local render names its strip."""
    try:
        job = job_settings.from_scene(scene)
    except diffusion_job.JobSettingsError:
        return ""
    return render_engine.take_label(job, job_settings.temporal_from_scene(scene), job.model)


def _ranges(frames: list) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    parts, start = [], None
    for index, frame in enumerate(frames):
        if start is None:
            start = frame
        if index + 1 == len(frames) or frames[index + 1] != frame + 1:
            parts.append(f"{start}" if start == frame else f"{start}-{frame}")
            start = None
    return ", ".join(parts)


def draw_render_menu(self, _context):
    self.layout.operator(SILK_OT_farm_load_take.bl_idname, text="Load Silk Farm Take...", icon="SEQUENCE")


CLASSES = (SILK_OT_farm_shots, SILK_OT_farm_prepare, SILK_OT_farm_finish, SILK_OT_farm_load_take, SILK_OT_farm_save_job_type)

_register_classes, _unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register():
    _register_classes()
    bpy.types.TOPBAR_MT_render.append(draw_render_menu)  # Render > Load Silk Farm Take...


def unregister():
    bpy.types.TOPBAR_MT_render.remove(draw_render_menu)
    _unregister_classes()
