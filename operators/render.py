"""Operators for everyday diffusion work: seed dice, worker start/stop, cancel, render preview,
stepping through the result history."""
from __future__ import annotations

import random
import threading
import time

import bpy
import numpy as np

from ..bridge.client import JobCancelled, WorkerError
from ..engine import conditioning, diffusion_job, job_settings, result_history, worker_link
from ..engine.guides import compute_guides
from ..engine.scene_capture import CaptureError, capture_frame, render_size
from ..engine.settings import SEED_LIMIT

PREVIEW_TIMEOUT = 1800.0  # seconds a preview may take, model loading included


def redraw_silk_panels() -> None:
    for window in getattr(bpy.context.window_manager, "windows", ()):
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "PROPERTIES", "IMAGE_EDITOR"):
                area.tag_redraw()


def _watch_worker_state():
    """Redraw the panels while the worker starts, so its status line moves."""
    redraw_silk_panels()
    return 0.5 if worker_link.status()[0] in ("starting", "busy") else None


class SILK_OT_randomize_seed(bpy.types.Operator):
    bl_idname = "silk.randomize_seed"
    bl_label = "Random Seed"
    bl_description = "Pick a new random seed (one a keyframe holds exactly)"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        context.scene.silk.seed = random.randrange(0, SEED_LIMIT)
        return {"FINISHED"}


class SILK_OT_start_worker(bpy.types.Operator):
    bl_idname = "silk.start_worker"
    bl_label = "Start Worker"
    bl_description = "Start the diffusion worker now (renders start it by themselves when needed)"

    def execute(self, context):
        worker_link.start_in_background()
        if bpy.app.background:
            deadline = time.monotonic() + 120
            while worker_link.status()[0] == "starting" and time.monotonic() < deadline:
                time.sleep(0.05)
        else:
            bpy.app.timers.register(_watch_worker_state, first_interval=0.2)
        state, text = worker_link.status()
        if state == "error":
            self.report({"ERROR"}, f"Silk: {text}")
            return {"CANCELLED"}
        return {"FINISHED"}


class SILK_OT_stop_worker(bpy.types.Operator):
    bl_idname = "silk.stop_worker"
    bl_label = "Stop Worker"
    bl_description = "Stop the diffusion worker and free its memory (a running job is ended)"

    def execute(self, context):
        worker_link.stop()
        redraw_silk_panels()
        return {"FINISHED"}


class SILK_OT_cancel(bpy.types.Operator):
    bl_idname = "silk.cancel"
    bl_label = "Stop Painting"
    bl_description = "Stop the render or preview the worker is painting, within one step"

    def execute(self, context):
        worker_link.cancel_requested.set()
        return {"FINISHED"}


class PreviewJob:
    """One preview painted on a thread; the operator polls it from the main thread."""

    def __init__(self, worker, job, request, warnings=()):
        self.worker = worker  # made on the main thread: the thread must not read bpy.context
        self.job, self.request, self.warnings = job, request, list(warnings)
        self.width, self.height = request.width, request.height
        self.step = 0
        self.steps = job.steps
        self.preview = None
        self.picture = None
        self.error = None
        self.cancelled = False
        self.done = threading.Event()

    def start(self) -> "PreviewJob":
        threading.Thread(target=self._run, name="silk-preview", daemon=True).start()
        return self

    def _run(self) -> None:
        try:
            if not worker_link.job_lock.acquire(timeout=1.0):
                self.error = "The worker is busy (a render is running); try again when it is done"
                return
            try:
                worker_link.cancel_requested.clear()
                worker = self.worker
                worker.ensure_started()
                worker_link.note_loaded(diffusion_job.load_model(worker, self.job,
                                                                 should_cancel=worker_link.cancel_requested.is_set))
                self.request.model = diffusion_job.model_request(self.job)  # the family the worker found
                self.picture, _ = worker.generate(self.request, timeout=PREVIEW_TIMEOUT, on_progress=self._on_progress,
                                                  should_cancel=worker_link.cancel_requested.is_set)
            finally:
                worker_link.job_lock.release()
        except JobCancelled:
            self.cancelled = True
        except (WorkerError, diffusion_job.JobSettingsError) as error:
            self.error = str(error)
        except Exception as error:  # the thread must always finish and say why
            self.error = f"{type(error).__name__}: {error}"
        finally:
            self.done.set()

    def _on_progress(self, progress) -> None:
        self.step, self.steps = progress.step, progress.steps
        if progress.preview is not None:
            self.preview = progress.preview


def preview_image(scene, width: int, height: int):
    name = f"Silk Preview {scene.name}"
    image = bpy.data.images.get(name)
    if image is not None and tuple(image.size) != (width, height):
        bpy.data.images.remove(image)
        image = None
    if image is None:
        image = bpy.data.images.new(name, width, height, alpha=True, float_buffer=True)
    return image


def show_picture(image, picture: np.ndarray) -> None:
    result_history.write_picture(image, picture)
    image.update()


class WorkerJobOperator:
    """An operator that paints on a thread without blocking Blender, as F12 does: progress in
    the status bar, Esc stops within a step; from scripts and in background mode it waits
    (with a deadline). Subclasses make the job (``_prepare``: an object with ``start()`` and a
    ``done`` event), show it while it runs and when it ends."""

    _timer = None
    _job = None

    def _prepare(self, context):
        raise NotImplementedError

    def _started(self, context, job) -> None:
        """Show the job's image once it has started (the modal path)."""

    def _progress(self, context, job) -> str:
        """Update what the user sees while the job runs; return the status bar's text."""
        raise NotImplementedError

    def _finish(self, context, job):
        raise NotImplementedError

    def _ended_early(self, job, stopped: str) -> bool:
        """Report a job the user stopped or that failed; True when it did either."""
        if job.cancelled:
            self.report({"INFO"}, f"Silk: {stopped}")
            return True
        if job.error:
            self.report({"ERROR"}, f"Silk: {job.error}")
            return True
        return False

    def _wait_seconds(self, job) -> float:
        return PREVIEW_TIMEOUT + 60

    def _start(self, context):
        try:
            return self._prepare(context).start()
        except (CaptureError, diffusion_job.JobSettingsError, WorkerError) as error:
            self.report({"ERROR"}, f"Silk: {error}")
            return None

    def invoke(self, context, event):
        self._job = self._start(context)
        if self._job is None:
            return {"CANCELLED"}
        self._started(context, self._job)
        self._timer = context.window_manager.event_timer_add(0.2, window=context.window)
        context.window_manager.modal_handler_add(self)
        redraw_silk_panels()
        return {"RUNNING_MODAL"}

    def execute(self, context):
        """Scripts and background mode: paint, wait (with a deadline), then show."""
        job = self._start(context)
        if job is None:
            return {"CANCELLED"}
        if not job.done.wait(self._wait_seconds(job)):
            worker_link.cancel_requested.set()
            self.report({"ERROR"}, f"Silk: {self.bl_label} did not finish in time")
            return {"CANCELLED"}
        return self._finish(context, job)

    def modal(self, context, event):
        job = self._job
        if event.type == "ESC":
            worker_link.cancel_requested.set()
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        context.workspace.status_text_set(self._progress(context, job))
        if not job.done.is_set():
            return {"RUNNING_MODAL"}
        context.window_manager.event_timer_remove(self._timer)
        context.workspace.status_text_set(None)
        return self._finish(context, job)


class SILK_OT_render_preview(WorkerJobOperator, bpy.types.Operator):
    bl_idname = "silk.render_preview"
    bl_label = "Render Preview"
    bl_description = ("Paint the current frame at reduced size and steps into the Image Editor, without "
                      "blocking Blender (Esc stops it)")

    def _prepare(self, context):
        scene = context.scene
        settings = scene.silk
        if scene.camera is None:
            raise CaptureError("The scene has no camera")
        full_width, full_height = render_size(scene)
        width = max(8, int(round(full_width * settings.preview_scale)))
        height = max(8, int(round(full_height * settings.preview_scale)))
        job = job_settings.from_scene(scene)
        job.steps = settings.preview_steps
        depsgraph = context.evaluated_depsgraph_get()
        frame, _warnings = capture_frame(depsgraph, scene.camera, width, height)
        guides = compute_guides(frame)
        camera = guides.camera
        if settings.depth_normalization == "CLIP":
            depth_range = conditioning.DepthRange.from_clip(camera.clip_start, camera.clip_end)
        else:  # a preview sees one frame: its own depths stand in for the shot's first frame
            depth_range = conditioning.depth_range_of_frame(guides.depth, guides.coverage, camera.clip_start,
                                                            camera.clip_end)
        # The same request F12 sends for this frame (prompt_mix between prompt keys included); settings
        # errors come now, in the operator's report.
        request = diffusion_job.generate_request(job, guides, depth_range)
        return PreviewJob(worker_link.client(), job, request, diffusion_job.usable_units(job)[1])

    def _started(self, context, job) -> None:
        self._image = preview_image(context.scene, job.width, job.height)
        result_history.show(self._image)

    def _progress(self, context, job) -> str:
        if job.preview is not None and not job.done.is_set():
            show_picture(self._image, diffusion_job.upscale_preview(job.preview, job.height, job.width))
        return f"Silk preview: step {job.step}/{job.steps} (Esc to stop)"

    def _finish(self, context, job):
        redraw_silk_panels()
        if self._ended_early(job, "preview stopped"):
            return {"CANCELLED"}
        image = preview_image(context.scene, job.width, job.height)
        show_picture(image, job.picture)
        result_history.show(image)
        for warning in job.warnings:
            self.report({"WARNING"}, f"Silk: {warning}")
        self.report({"INFO"}, f"Silk: preview painted ({job.width}x{job.height}, {job.steps} steps)")
        return {"FINISHED"}


class SILK_OT_history_step(bpy.types.Operator):
    bl_idname = "silk.history_step"
    bl_label = "Step Through Silk Results"
    bl_description = "Show the previous or next Silk F12 result in this Image Editor"

    direction: bpy.props.IntProperty(default=-1)

    @classmethod
    def poll(cls, context):
        return context.space_data is not None and context.space_data.type == "IMAGE_EDITOR"

    def execute(self, context):
        image = result_history.step(context.space_data, self.direction)
        if image is None:
            self.report({"INFO"}, "Silk: no older result" if self.direction < 0 else "Silk: no newer result")
            return {"CANCELLED"}
        context.space_data.image = image
        return {"FINISHED"}


CLASSES = (SILK_OT_randomize_seed, SILK_OT_start_worker, SILK_OT_stop_worker, SILK_OT_cancel,
           SILK_OT_render_preview, SILK_OT_history_step)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
