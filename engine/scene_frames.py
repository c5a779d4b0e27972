"""The scene as the animation core sees it (``animation.FrameSource``): Blender's side.

Guides and settings at any frame, exact motion between any two frames, the shot a frame belongs
to, and where frames are saved. Other frames are reached with ``engine.frame_set`` and the
render always returns to the frame it is rendering.
"""
from __future__ import annotations

from . import job_settings
from .animation import FrameSettings, FrameSourceError
from .guides import compute_guides
from .scene_capture import CaptureError, capture_frame, motion_cache, scripts_between_frames

GUIDES_KEPT = 6  # guides of other frames remembered while a frame renders (cadence needs a few)


class SceneFrames:
    def __init__(self, engine, depsgraph, camera_object, width: int, height: int, is_animation: bool,
                 current_guides=None, current_geometry=None):
        self.engine, self.depsgraph, self.camera_object = engine, depsgraph, camera_object
        self.scene = depsgraph.scene
        self.name = self.scene.name
        self.width, self.height = width, height
        self.is_animation = is_animation
        self.frame_step = max(1, self.scene.frame_step) if is_animation else 1
        self.output_is_movie = bool(self.scene.render.is_movie_format)
        from .takes import loop_output_problem  # takes needs the render engine, which needs this module
        self.loop_output_problem = loop_output_problem(self.scene) if is_animation else ""
        self.frame = self.scene.frame_current
        self._geometry = {self.frame: current_geometry} if current_geometry is not None else {}
        self._guides = {(self.frame, self.frame - 1): current_guides} if current_guides is not None else {}
        self._settings = {}
        shot = self.shot(self.frame)
        self._take_key = (self.scene.name, shot.start, camera_object.name, width, height)

    @property
    def take_key(self) -> tuple:
        return self._take_key

    def shot(self, frame: int):
        return job_settings.shot_of(self.scene, frame)

    def output_file(self, frame: int) -> str:
        render = self.scene.render
        if not render.filepath or render.is_movie_format:
            return ""
        return render.frame_path(frame=frame)

    def settings(self, frame: int) -> FrameSettings:
        found = self._settings.get(frame)
        if found is None:
            if frame == self.frame:
                found = _read_settings(self.scene)
            else:
                found = self._at(frame, lambda: _read_settings(self.depsgraph.scene_eval))
            self._settings[frame] = found
        return found

    def guides(self, frame: int, relative_to: int | None):
        key = (frame, relative_to)
        found = self._guides.get(key)
        if found is None:
            try:
                current = self._geometry_at(frame)
                other = None
                if relative_to is not None:
                    known = frozenset(instance.key for instance in current.instances)
                    other = self._captured(relative_to, known)
            except CaptureError as error:
                raise FrameSourceError(str(error)) from error
            found = compute_guides(current, other)
            if len(self._guides) >= GUIDES_KEPT:
                self._guides.pop(next(key for key in self._guides if key[0] != self.frame or key[1] != self.frame - 1))
            self._guides[key] = found
        return found

    def _geometry_at(self, frame: int):
        found = self._geometry.get(frame)
        if found is None:
            found = self._captured(frame)
            if len(self._geometry) >= GUIDES_KEPT:
                self._geometry.pop(next(key for key in self._geometry if key != self.frame))
            self._geometry[frame] = found
        return found

    def _captured(self, frame: int, positions_only_for=frozenset()):
        """The scene at ``frame`` (another frame than the rendered one), as this render job read it
        before where nothing changed since (``scene_capture.MotionCache.keep_frame``)."""
        full = not positions_only_for
        reusable = self.is_animation and not scripts_between_frames()
        context = (self.scene.name, self.depsgraph.view_layer.name, self.camera_object.name, self.width, self.height)
        found = motion_cache.kept_frame(context, frame, full) if reusable else None
        if found is None:
            generation = motion_cache.generation
            found = self._at(frame, lambda: capture_frame(self.depsgraph, self.camera_object, self.width,
                                                           self.height, positions_only_for)[0])
            if reusable:
                motion_cache.keep_frame(context, frame, full, found, generation)
        return found

    def _at(self, frame: int, read):
        """``read()`` with the scene at ``frame``; back at the rendered frame afterwards."""
        scene = self.scene
        rendering, subframe = scene.frame_current, scene.frame_subframe
        try:
            self.engine.frame_set(frame, 0.0)
            return read()
        finally:
            if scene.frame_current != rendering or scene.frame_subframe != subframe:
                self.engine.frame_set(rendering, subframe)


def _read_settings(scene) -> FrameSettings:
    return FrameSettings(job_settings.from_scene(scene), job_settings.temporal_from_scene(scene))
