"""The Silk render engine (``bl_idname = "SILK"``).

Every render computes the guides (Depth, Normal, Vector, Occlusion passes) from the
evaluated scene at frames t-1, t and t+1, then fills Combined according to
``scene.silk.mode``. Problems the user can fix end in one clear render report;
nothing raises out of ``render()``.
"""
from __future__ import annotations

import logging
import os
import time
import traceback

import bpy
import numpy as np

from ..bridge.client import JobCancelled, WorkerError
from . import (animation, conditioning, diffusion_job, job_settings, motion_render, noise, result_history,
               worker_link)
from .color import srgb_to_linear
from .guides import compute_guides, kernels
from . import scene_capture
from .scene_capture import CaptureError, capture_motion_frames, render_size
from .scene_frames import SceneFrames

log = logging.getLogger("silk")

PASSES = (
    # name, channels, channel ids, type
    ("Depth", 1, "Z", "VALUE"),
    ("Normal", 3, "XYZ", "VECTOR"),
    ("Vector", 4, "XYZW", "VECTOR"),
    ("Occlusion", 1, "X", "VALUE"),
)
# With ``scene.silk.use_noise_pass``: the latent noise the frame starts from, each latent pixel
# over its 8x8 block.
NOISE_PASS = ("Noise", 4, "XYZW", "VECTOR")

# Largest render Silk accepts; beyond this the guides need too much memory.
MAX_PIXELS = 8192 * 8192
# How long a render waits for a busy worker (a panel preview finishing).
WORKER_WAIT_SECONDS = 600

# Everything the current render job keeps between its frames (a new one at each ``render_init``).
session = animation.RenderSession()
# The last render's reports, newest last, for the panel and for scripts.
last_reports: list[tuple[str, str]] = []
# The worker's picture of the last painted frame (display sRGB, rows top-down), for scripts.
last_picture: np.ndarray | None = None


def take_label(job, temporal_settings, model: str) -> str:
    """A take's settings in a strip name."""
    if not temporal_settings.use_feedback:
        return f"independent | seed {job.seed} | {os.path.basename(model.rstrip('/'))}"
    parts = [f"seed {job.seed}", f"str {temporal_settings.strength:.2f}", f"fus {temporal_settings.fusion:.2f}",
             temporal_settings.noise_mode.lower()]
    if temporal_settings.cadence > 1:
        parts.append(f"cad {temporal_settings.cadence}")
    return " | ".join(parts + [os.path.basename(model.rstrip("/"))])


@bpy.app.handlers.persistent  # opening a file must not drop it
def start_session(*_args) -> None:
    """A render job starts: a new session (the last take's paintings carry over for F12 stepping)."""
    global session
    session = session.next()
    scene_capture.new_job()  # frames kept for reuse belong to one job


class SilkRenderEngine(bpy.types.RenderEngine):
    bl_idname = "SILK"
    bl_label = "Silk"
    bl_use_preview = False
    bl_use_postprocess = True
    bl_use_eevee_viewport = True

    def update_render_passes(self, scene=None, renderlayer=None):
        self.register_pass(scene, renderlayer, "Combined", 4, "RGBA", "COLOR")
        for name, channels, ids, kind in PASSES:
            self.register_pass(scene, renderlayer, name, channels, ids, kind)
        if scene is not None and scene.silk.use_noise_pass:
            self.register_pass(scene, renderlayer, *NOISE_PASS)

    # -- reporting ---------------------------------------------------------
    def _report(self, level: str, message: str) -> None:
        last_reports.append((level, message))
        del last_reports[:-20]
        self.report({level}, f"Silk: {message}")
        (log.error if level == "ERROR" else log.warning if level == "WARNING" else log.info)(message)

    # -- render --------------------------------------------------------------
    def render(self, depsgraph):
        global last_picture
        last_reports.clear()
        last_picture = None
        painted = False
        try:
            painted = self._render(depsgraph)
        except (CaptureError, animation.FrameSourceError, diffusion_job.JobSettingsError) as error:
            self._report("ERROR", str(error))
        except MemoryError:
            self._report("ERROR", "Out of memory while computing the guides; lower the resolution")
        except Exception as error:  # never let a traceback reach the user's render
            log.error("Silk render failed:\n%s", traceback.format_exc())
            self._report("ERROR", f"Render failed ({type(error).__name__}: {error}); details in the system console")
        if not painted:
            log.info("Silk: frame %d not finished", depsgraph.scene.frame_current)

    def _render(self, depsgraph) -> bool:
        """Renders the frame; False when it could not be finished (nothing worth saving)."""
        scene = depsgraph.scene
        settings = scene.silk
        width, height = render_size(scene)
        if width * height > MAX_PIXELS:
            raise CaptureError(f"The render size {width}x{height} is too large (at most {MAX_PIXELS} pixels)")
        camera_object = scene.camera
        if camera_object is None:
            raise CaptureError("The scene has no camera. Add a camera and set it as the scene camera (Scene properties)")

        started = time.perf_counter()
        self.update_stats("Silk", "Evaluating frames for motion")
        current, previous, following, warnings = capture_motion_frames(self, depsgraph, camera_object, width, height)
        if self.test_break():
            return False
        if kernels.AVAILABLE and not kernels.rasterize_indexed.signatures:
            self.update_stats("Silk", "Loading the guide kernels (compiled on the first render after install)")
        else:
            self.update_stats("Silk", "Computing guides")
        guides = compute_guides(current, previous, following)
        for note in dict.fromkeys(guides.notes):
            log.info(note)
        for warning in warnings:
            self._report("WARNING", warning)
        if not current.instances or not guides.coverage.any():
            self._report("WARNING", "Nothing visible to the camera: the guides are empty")
        elif guides.backfacing_fraction > 0.9:
            self._report("WARNING", "The camera seems to be inside an object: it sees mostly back faces")
        log.info("Silk guides for frame %d in %.3f s", scene.frame_current, time.perf_counter() - started)

        frames = SceneFrames(self, depsgraph, camera_object, width, height, bool(self.is_animation),
                             current_guides=guides, current_geometry=current)
        self._warn_traps(scene, frames, width, height)
        combined = np.zeros((height, width, 4), dtype=np.float32)
        combined[..., 3] = 1.0
        result = self.begin_result(0, 0, width, height, layer=depsgraph.view_layer.name)
        try:
            self._write_passes(result, {"Depth": guides.depth, "Normal": guides.normal, "Vector": guides.vector,
                                        "Occlusion": guides.occlusion})
            if settings.mode == "GUIDES":
                combined[..., :3] = srgb_to_linear(self._guide_picture(frames, guides, settings))
                self._write_passes(result, {"Combined": combined})
                if settings.use_noise_pass:
                    self._write_noise(result, session.frame_noise(frames, scene.frame_current), height, width)
                return True
            self._write_passes(result, {"Combined": combined})
            self.update_result(result)  # the guides are visible while the worker paints
            painted = self._diffuse(frames, result, combined)
            picture = None if painted is None else painted.picture
            global last_picture
            last_picture = picture
            # A cancelled or failed frame leaves Combined black, never a half-denoised preview.
            combined[..., :3] = 0.0 if picture is None else srgb_to_linear(picture)
            self._write_passes(result, {"Combined": combined})
            if settings.use_noise_pass and painted is not None:
                self._write_noise(result, painted.noise, height, width)
            if picture is not None and not self.is_animation:
                result_history.queue(scene, combined)
            return picture is not None
        finally:
            self.end_result(result)
            for level, message in session.take_reports():
                self._report(level, message)

    def _warn_traps(self, scene, frames: SceneFrames, width: int, height: int) -> None:
        """Once per render: what silently changes the picture or wastes the render."""
        silk = scene.silk
        diffusing = silk.mode == "DIFFUSE"
        warnings = animation.render_warnings(
            scene.view_settings.view_transform, scene.render.dither_intensity,
            scene.frame_step if self.is_animation else 1, silk.use_feedback, width, height,
            diffusion_job.model_family(silk.model.strip(), silk.model_family) if diffusing else "",
            silk.scheduler, silk.fusion if diffusing else 0.0)
        for key, message in warnings:
            session.report("WARNING", key, message)

    def _write_noise(self, result, latent, height: int, width: int) -> None:
        """The Noise pass: zeros for a frame painted from no noise (a cadence in-between)."""
        shown = (noise.upscale_latent(latent, height, width) if latent is not None
                 else np.zeros((height, width, 4), dtype=np.float32))
        self._write_passes(result, {"Noise": shown})

    # -- diffusion -----------------------------------------------------------
    def _should_cancel(self) -> bool:
        return self.test_break() or worker_link.cancel_requested.is_set()

    def _diffuse(self, frames: SceneFrames, result, combined) -> animation.Painted | None:
        """The frame painted by the worker (with feedback in animation); None when it was not."""
        scene = frames.scene
        settings = frames.settings(scene.frame_current)
        model = diffusion_job.model_request(settings.job)
        for warning in diffusion_job.usable_units(settings.job)[1]:
            self._report("WARNING", warning)
        try:
            worker = worker_link.client()
        except WorkerError as error:
            self._report("ERROR", str(error))
            return None
        if not self._take_worker():
            return None
        worker_link.cancel_requested.clear()
        try:
            if worker.state != "ready":
                self.update_stats("Silk", "Starting the diffusion worker")
            worker.ensure_started()
            if worker_link.loaded.get("source") != model.source:
                self.update_stats("Silk", f"Loading {model.source} (once; the first time may download it)")
            worker_link.note_loaded(diffusion_job.load_model(worker, settings.job, should_cancel=self._should_cancel))
            started = time.perf_counter()
            painter = WorkerPainter(self, worker, model, result, combined)
            if motion_render.wanted(scene):  # a motion module paints windows of frames (engine/windows.py)
                painted = motion_render.paint(self, frames, session, worker, model, result, combined)
                label = motion_render.take_label(settings.job, scene, model.source)
            else:
                painted = session.paint(frames, painter, scene.frame_current, scene.silk.depth_normalization)
                label = take_label(settings.job, settings.temporal, model.source)
            if self.is_animation:
                session.record(scene.name, scene.frame_current, label)
            self.update_stats("Silk", f"Frame {scene.frame_current} done in {time.perf_counter() - started:.1f} s | "
                                      f"{model.source} | {painter.device}")
            return painted
        except JobCancelled:
            self._report("INFO", "Cancelled; the worker is ready for the next render")
            return None
        except WorkerError as error:
            self._report("ERROR", str(error))
            return None
        finally:
            worker_link.job_lock.release()

    def _take_worker(self) -> bool:
        """Wait for the worker to be free (a panel preview may hold it), with a deadline."""
        deadline = time.monotonic() + WORKER_WAIT_SECONDS
        while not worker_link.job_lock.acquire(timeout=0.1):
            if self._should_cancel():
                return False
            if time.monotonic() > deadline:
                self._report("ERROR", f"The worker stayed busy for {WORKER_WAIT_SECONDS} s (a preview?); try again")
                return False
        return True

    def _guide_picture(self, frames: SceneFrames, guides, settings) -> np.ndarray:
        preview = settings.guide_preview
        if preview == "DEPTH":
            depth_range = session.depth_range(frames, frames.frame, guides, settings.depth_normalization)
            return conditioning.depth_condition(guides.depth, depth_range)
        if preview == "NORMAL":
            return conditioning.normal_condition(guides.normal, guides.camera.view)
        if preview == "MOTION":
            return conditioning.motion_picture(guides.vector)
        return conditioning.occlusion_picture(guides.occlusion)

    @staticmethod
    def _write_passes(result, values: dict) -> None:
        for render_pass in result.layers[0].passes:
            data = values.get(render_pass.name)
            if data is not None:
                # Blender's passes are stored bottom-up.
                flat = np.ascontiguousarray(data[::-1], dtype=np.float32).reshape(-1)
                render_pass.rect.foreach_set(flat)


class WorkerPainter:
    """The animation core's painter: one request to the worker, with progress and step previews."""

    def __init__(self, engine: SilkRenderEngine, worker, model, result, combined):
        self.engine, self.worker, self.model, self.result, self.combined = engine, worker, model, result, combined
        self.device = worker_link.loaded.get("device", "?").upper()

    def paint(self, request: animation.PaintRequest) -> np.ndarray:
        engine, combined = self.engine, self.combined
        height, width = combined.shape[:2]
        label = f"seed {request.seed} | {self.model.source} | {self.device}"
        if not request.is_current:
            engine.update_stats("Silk", f"Painting frame {request.frame} (needed before its turn)")

        def on_progress(progress):
            engine.update_progress(progress.step / max(1, progress.steps))
            engine.update_stats("Silk", f"Step {progress.step}/{progress.steps} | {label}")
            if progress.preview is not None and request.is_current:
                combined[..., :3] = srgb_to_linear(diffusion_job.upscale_preview(progress.preview, height, width))
                engine._write_passes(self.result, {"Combined": combined})
                engine.update_result(self.result)

        if request.is_current:
            engine.update_stats("Silk", f"Painting | {label}")
        job = request.job
        if worker_link.loaded.get("source") == job.model.strip():  # the family the worker found on loading
            job.reported_family = worker_link.loaded.get("family")
        frame_request = diffusion_job.generate_request(
            job, request.guides, request.depth_range, seed=request.seed, init_image=request.init_image,
            mask=request.strength_map, fusion=request.fusion, fusion_end=request.fusion_end, noise=request.noise,
            faithful_encoding=request.faithful_encoding)
        picture, _info = self.worker.generate(frame_request, on_progress=on_progress,
                                              should_cancel=engine._should_cancel)
        return picture


def register():
    bpy.utils.register_class(SilkRenderEngine)
    if start_session not in bpy.app.handlers.render_init:
        bpy.app.handlers.render_init.append(start_session)
    scene_capture.register()


def unregister():
    scene_capture.unregister()
    if start_session in bpy.app.handlers.render_init:
        bpy.app.handlers.render_init.remove(start_session)
    bpy.utils.unregister_class(SilkRenderEngine)
