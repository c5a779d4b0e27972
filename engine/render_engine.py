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
from . import animation, conditioning, diffusion_job, job_settings, motion_render, result_history, takes, \
    worker_link
from .color import srgb_to_linear
from .guides import compute_guides, kernels
from .scene_capture import CaptureError, capture_motion_frames, render_size

log = logging.getLogger("silk")

PASSES = (
    # name, channels, channel ids, type
    ("Depth", 1, "Z", "VALUE"),
    ("Normal", 3, "XYZ", "VECTOR"),
    ("Vector", 4, "XYZW", "VECTOR"),
    ("Occlusion", 1, "X", "VALUE"),
)

# Largest render Silk accepts; beyond this the guides need too much memory.
MAX_PIXELS = 8192 * 8192
# How long a render waits for a busy worker (a panel preview finishing).
WORKER_WAIT_SECONDS = 600

# Depth ranges of shots, computed once per render job (cleared by ``render_init``).
_shot_depth_ranges: dict = {}
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
def clear_job_caches(*_args) -> None:
    _shot_depth_ranges.clear()
    animation.new_job()


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
        except (CaptureError, diffusion_job.JobSettingsError) as error:
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

        combined = np.zeros((height, width, 4), dtype=np.float32)
        combined[..., 3] = 1.0
        result = self.begin_result(0, 0, width, height, layer=depsgraph.view_layer.name)
        try:
            self._write_passes(result, {"Depth": guides.depth, "Normal": guides.normal, "Vector": guides.vector,
                                        "Occlusion": guides.occlusion})
            if settings.mode == "GUIDES":
                combined[..., :3] = srgb_to_linear(self._guide_picture(depsgraph, guides, settings))
                self._write_passes(result, {"Combined": combined})
                return True
            self._write_passes(result, {"Combined": combined})
            self.update_result(result)  # the guides are visible while the worker paints
            picture = self._diffuse(depsgraph, guides, current, result, combined)
            global last_picture
            last_picture = picture
            # A cancelled or failed frame leaves Combined black, never a half-denoised preview.
            combined[..., :3] = 0.0 if picture is None else srgb_to_linear(picture)
            self._write_passes(result, {"Combined": combined})
            if picture is not None and not self.is_animation:
                result_history.queue(scene, combined)
            return picture is not None
        finally:
            self.end_result(result)

    # -- diffusion -----------------------------------------------------------
    def _should_cancel(self) -> bool:
        return self.test_break() or worker_link.cancel_requested.is_set()

    def _diffuse(self, depsgraph, guides, current, result, combined):
        """Guides -> conditioning -> worker (with feedback in animation). Returns the picture
        (display sRGB) or None."""
        scene = depsgraph.scene
        height, width = guides.depth.shape
        job = job_settings.from_scene(scene)
        model = diffusion_job.model_request(job)
        shot = job_settings.shot_of(scene, scene.frame_current)
        camera_object = scene.camera
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
            if worker_link.loaded.get("source") != model["source"]:
                self.update_stats("Silk", f"Loading {model['source']} (once; the first time may download it)")
            worker_link.note_loaded(worker.load_model(model, should_cancel=self._should_cancel))
            device = worker_link.loaded.get("device", "?").upper()
            started = time.perf_counter()

            def paint(frame_guides, frame_job, init=None, strength_map=None, fusion=0.0, noise=None, seed=None):
                seed = frame_job.seed if seed is None else seed
                label = f"seed {seed} | {model['source']} | {device}"
                preview_here = frame_guides is guides  # a key painted ahead is not this frame's preview

                def on_progress(progress):
                    self.update_progress(progress.step / max(1, progress.steps))
                    self.update_stats("Silk", f"Step {progress.step}/{progress.steps} | {label}")
                    if progress.preview is not None and preview_here:
                        combined[..., :3] = srgb_to_linear(
                            diffusion_job.upscale_preview(progress.preview, height, width))
                        self._write_passes(result, {"Combined": combined})
                        self.update_result(result)

                self.update_stats("Silk", f"Painting | {label}")
                units = diffusion_job.control_units(frame_job, frame_guides, self._depth_range(depsgraph, guides))
                extra = {}
                if init is not None:
                    extra.update(init_image=init, mask=strength_map, strength=float(strength_map.max()))
                    if fusion > 0:
                        extra["fusion"] = float(fusion)
                if noise is not None:
                    extra["noise"] = noise
                if frame_job.prompt_mix:
                    extra["prompt_mix"] = frame_job.prompt_mix
                picture, _info = worker.generate(
                    model, frame_job.prompt, units, width, height, negative_prompt=frame_job.negative_prompt,
                    seed=seed, steps=frame_job.steps, guidance=frame_job.guidance, scheduler=frame_job.scheduler,
                    preview=True, on_progress=on_progress, should_cancel=self._should_cancel, **extra)
                return picture

            def motion_to(other):
                return animation.guides_between(self, depsgraph, camera_object, width, height,
                                                scene.frame_current, other, current=current)

            def key_guides(frame, other):
                self.update_stats("Silk", f"Painting frame {frame} (needed before its turn)")
                guides_there, (job_there, temporal_there) = animation.guides_between(
                    self, depsgraph, camera_object, width, height, frame, other,
                    read_settings=lambda evaluated: (job_settings.from_scene(evaluated),
                                                     job_settings.temporal_from_scene(evaluated)))
                return guides_there, job_there, temporal_there

            if motion_render.wanted(scene):  # a motion module paints windows of frames (engine/windows.py)
                picture = motion_render.paint(self, depsgraph, job, model, worker, guides, result, combined,
                                              self._depth_range(depsgraph, guides))
                label = motion_render.take_label(job, scene, model["source"])
            else:
                context = animation.FrameContext(
                    frame=scene.frame_current, shot=shot,
                    take_key=(scene.name, shot.start, camera_object.name, width, height), width=width, height=height,
                    is_animation=bool(self.is_animation),
                    frame_path=lambda frame: scene.render.frame_path(frame=frame) if scene.render.filepath else "")
                temporal_settings = job_settings.temporal_from_scene(scene)
                painter = animation.FramePainter(context, job, temporal_settings, paint, motion_to, key_guides,
                                                 rewrite_fn=lambda frame, picture: takes.rewrite(scene, frame, picture))
                picture = painter.paint(guides)
                label = take_label(job, temporal_settings, model["source"])
            if self.is_animation:
                takes.record(scene, scene.frame_current, label)
            self.update_stats("Silk", f"Frame {scene.frame_current} done in {time.perf_counter() - started:.1f} s | "
                                      f"{model['source']} | {device}")
            return picture
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

    def _guide_picture(self, depsgraph, guides, settings) -> np.ndarray:
        preview = settings.guide_preview
        if preview == "DEPTH":
            return conditioning.depth_condition(guides.depth, self._depth_range(depsgraph, guides))
        if preview == "NORMAL":
            return conditioning.normal_condition(guides.normal, guides.camera.view)
        if preview == "MOTION":
            return conditioning.motion_picture(guides.vector)
        return conditioning.occlusion_picture(guides.occlusion)

    def _depth_range(self, depsgraph, guides) -> conditioning.DepthRange:
        """One depth normalisation per shot: from the depths of the shot's first frame."""
        scene = depsgraph.scene
        camera = guides.camera
        if scene.silk.depth_normalization == "CLIP":
            return conditioning.DepthRange.from_clip(camera.clip_start, camera.clip_end)
        shot_start = job_settings.shot_of(scene, scene.frame_current).start
        key = (scene.name, shot_start, scene.camera.name, camera.width, camera.height)
        found = _shot_depth_ranges.get(key)
        if found is None:
            first = guides
            if scene.frame_current != shot_start:
                try:
                    first = animation.guides_between(self, depsgraph, scene.camera, camera.width, camera.height,
                                                     shot_start, None)
                except CaptureError:
                    first = None
            found = (conditioning.depth_range_of_frame(first.depth, first.coverage, camera.clip_start, camera.clip_end)
                     if first is not None else conditioning.DepthRange.from_clip(camera.clip_start, camera.clip_end))
            _shot_depth_ranges[key] = found
        return found

    @staticmethod
    def _write_passes(result, values: dict) -> None:
        for render_pass in result.layers[0].passes:
            data = values.get(render_pass.name)
            if data is not None:
                # Blender's passes are stored bottom-up.
                flat = np.ascontiguousarray(data[::-1], dtype=np.float32).reshape(-1)
                render_pass.rect.foreach_set(flat)


def register():
    bpy.utils.register_class(SilkRenderEngine)
    if clear_job_caches not in bpy.app.handlers.render_init:
        bpy.app.handlers.render_init.append(clear_job_caches)


def unregister():
    if clear_job_caches in bpy.app.handlers.render_init:
        bpy.app.handlers.render_init.remove(clear_job_caches)
    bpy.utils.unregister_class(SilkRenderEngine)
