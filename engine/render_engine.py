"""The Silk render engine (``bl_idname = "SILK"``).

Every render computes the guides (Depth, Normal, Vector, Occlusion passes) from the
evaluated scene at frames t-1, t and t+1, then fills Combined according to
``scene.silk.mode``. Problems the user can fix end in one clear render report;
nothing raises out of ``render()``.
"""
from __future__ import annotations

import logging
import time
import traceback

import bpy
import numpy as np

from . import conditioning
from .color import srgb_to_linear
from .guides import compute_guides, kernels
from .scene_capture import CaptureError, capture_frame, capture_motion_frames, render_size

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

# Depth ranges of shots, computed once per render job (cleared by ``render_init``).
_shot_depth_ranges: dict = {}
# The last render's reports, newest last, for the panel and for scripts.
last_reports: list[tuple[str, str]] = []


def clear_job_caches(*_args) -> None:
    _shot_depth_ranges.clear()


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
        last_reports.clear()
        try:
            self._render(depsgraph)
        except CaptureError as error:
            self._report("ERROR", str(error))
        except MemoryError:
            self._report("ERROR", "Out of memory while computing the guides; lower the resolution")
        except Exception as error:  # never let a traceback reach the user's render
            log.error("Silk render failed:\n%s", traceback.format_exc())
            self._report("ERROR", f"Render failed ({type(error).__name__}: {error}); details in the system console")

    def _render(self, depsgraph) -> None:
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
            return
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
        if settings.mode == "GUIDES":
            picture = self._guide_picture(depsgraph, guides, settings)
            combined[..., :3] = srgb_to_linear(picture)
        self._write_result(depsgraph, combined, guides)
        if settings.mode == "DIFFUSE":
            self._report(
                "ERROR",
                "No diffusion backend is ready yet: the guide passes were rendered, Combined is empty. "
                "Set Silk's Mode to Guides to preview them",
            )

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
        shot_start = scene.frame_start
        key = (scene.name, shot_start, scene.camera.name, camera.width, camera.height)
        found = _shot_depth_ranges.get(key)
        if found is None:
            if scene.frame_current == shot_start:
                found = conditioning.DepthRange.from_percentiles(guides.depth, guides.coverage)
            else:
                found = self._first_frame_range(depsgraph, shot_start, camera)
            found = found or conditioning.DepthRange.from_clip(camera.clip_start, camera.clip_end)
            _shot_depth_ranges[key] = found
        return found

    def _first_frame_range(self, depsgraph, shot_start, camera):
        scene = depsgraph.scene
        frame, subframe = scene.frame_current, scene.frame_subframe
        try:
            self.frame_set(shot_start, 0.0)
            first, _ = capture_frame(depsgraph, scene.camera, camera.width, camera.height)
            first_guides = compute_guides(first)
            return conditioning.DepthRange.from_percentiles(first_guides.depth, first_guides.coverage)
        except CaptureError:
            return None
        finally:
            self.frame_set(frame, subframe)

    def _write_result(self, depsgraph, combined, guides) -> None:
        height, width = combined.shape[:2]
        result = self.begin_result(0, 0, width, height, layer=depsgraph.view_layer.name)
        try:
            layer = result.layers[0]
            values = {
                "Combined": combined,
                "Depth": guides.depth,
                "Normal": guides.normal,
                "Vector": guides.vector,
                "Occlusion": guides.occlusion,
            }
            for render_pass in layer.passes:
                data = values.get(render_pass.name)
                if data is None:
                    continue
                # Blender's passes are stored bottom-up.
                flat = np.ascontiguousarray(data[::-1], dtype=np.float32).reshape(-1)
                render_pass.rect.foreach_set(flat)
        finally:
            self.end_result(result)


def register():
    bpy.utils.register_class(SilkRenderEngine)
    if clear_job_caches not in bpy.app.handlers.render_init:
        bpy.app.handlers.render_init.append(clear_job_caches)


def unregister():
    if clear_job_caches in bpy.app.handlers.render_init:
        bpy.app.handlers.render_init.remove(clear_job_caches)
    bpy.utils.unregister_class(SilkRenderEngine)
