"""The variant picker: paint several seeds of the current frame side by side, then choose one
(it becomes the seed, keyed at the shot's first frame if wanted). And the image-prompt keys."""
from __future__ import annotations

import random
import threading
import time

import bpy
from bpy.props import IntProperty

from ..bridge.client import JobCancelled, WorkerError
from ..engine import diffusion_job, image_prompts, job_settings, result_history, variants, walk_settings, worker_link
from ..engine.scene_capture import CaptureError
from .render import PREVIEW_TIMEOUT, SILK_OT_render_preview, redraw_silk_panels
from .units import AddItem, RemoveSelectedItem

SEEDS_KEY = "silk_variant_seeds"  # the grid image's custom property: the seed of each tile
# F-curves hold float32 values: only seeds below 2^24 survive being keyed exactly, so variants
# use those (a keyed 1817957071 comes back as 1817957120, another picture).
SEED_LIMIT = 2 ** 24


def grid_image_name(scene) -> str:
    return f"Silk Variants {scene.name}"


def grid_image(scene):
    """The scene's variant grid image, if one was painted (and not removed)."""
    return bpy.data.images.get(grid_image_name(scene))


def variant_seeds(seed: int, count: int) -> list:
    """The current seed first (so the picture the user knows is among them; when it can be keyed
    exactly), then new ones."""
    pick = random.Random(f"{seed}-{time.time_ns()}")
    seeds = [seed] if seed < SEED_LIMIT else []
    while len(seeds) < count:
        candidate = pick.randrange(0, SEED_LIMIT)
        if candidate not in seeds:
            seeds.append(candidate)
    return seeds


class VariantsJob:
    """The variants painted one after the other on a thread; the operator polls it."""

    def __init__(self, worker, job, units, width, height, seeds):
        self.worker, self.job, self.units, self.width, self.height = worker, job, units, width, height
        self.seeds = seeds
        self.pictures = [None] * len(seeds)
        self.current = 0  # the tile being painted
        self.step, self.steps = 0, job.steps
        self.error = None
        self.cancelled = False
        self.done = threading.Event()

    def start(self) -> "VariantsJob":
        threading.Thread(target=self._run, name="silk-variants", daemon=True).start()
        return self

    def _run(self) -> None:
        try:
            if not worker_link.job_lock.acquire(timeout=1.0):
                self.error = "The worker is busy (a render is running); try again when it is done"
                return
            try:
                worker_link.cancel_requested.clear()
                self.worker.ensure_started()
                model = diffusion_job.model_request(self.job)
                worker_link.note_loaded(self.worker.load_model(model, should_cancel=worker_link.cancel_requested.is_set))
                for index, seed in enumerate(self.seeds):
                    self.current = index
                    self.pictures[index], _ = self.worker.generate(
                        model, self.job.prompt, self.units, self.width, self.height,
                        negative_prompt=self.job.negative_prompt, seed=seed, steps=self.job.steps,
                        guidance=self.job.guidance, scheduler=self.job.scheduler, timeout=PREVIEW_TIMEOUT,
                        on_progress=self._on_progress, should_cancel=worker_link.cancel_requested.is_set,
                        prompt_mix=self.job.prompt_mix or None, **image_prompts.request_arguments(self.job))
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


def show_grid(scene, job: VariantsJob):
    """Write the grid as it stands into the scene's variant image (made or resized as needed)."""
    picture = variants.compose(job.pictures, job.width, job.height, variants.labels(job.seeds))
    height, width = picture.shape[:2]
    name = grid_image_name(scene)
    image = bpy.data.images.get(name)
    if image is not None and tuple(image.size) != (width, height):
        bpy.data.images.remove(image)
        image = None
    if image is None:
        image = bpy.data.images.new(name, width, height, alpha=True, float_buffer=True)
    result_history.write_picture(image, picture)
    image[SEEDS_KEY] = list(job.seeds)
    image["silk_variant_tile"] = (job.width, job.height)
    image["silk_variant_frame"] = scene.frame_current
    image.update()
    return image


class SILK_OT_paint_variants(bpy.types.Operator):
    bl_idname = "silk.paint_variants"
    bl_label = "Paint Variants"
    bl_description = ("Paint the current frame with several seeds side by side in the Image Editor (preview size, "
                      "full steps); then choose one with the numbered buttons. Esc stops")

    _timer = None
    _job: VariantsJob | None = None

    def _prepare(self, context) -> VariantsJob:
        preview = SILK_OT_render_preview._prepare(self, context)  # the same guides, units and checks as a preview
        settings = context.scene.silk
        preview.job.steps = settings.steps
        seeds = variant_seeds(settings.seed, settings.variant_count)
        return VariantsJob(preview.worker, preview.job, preview.units, preview.width, preview.height, seeds)

    def invoke(self, context, event):
        try:
            self._job = self._prepare(context).start()
        except (CaptureError, diffusion_job.JobSettingsError, WorkerError) as error:
            self.report({"ERROR"}, f"Silk: {error}")
            return {"CANCELLED"}
        result_history.show(show_grid(context.scene, self._job))
        self._shown = 0
        self._timer = context.window_manager.event_timer_add(0.2, window=context.window)
        context.window_manager.modal_handler_add(self)
        redraw_silk_panels()
        return {"RUNNING_MODAL"}

    def execute(self, context):
        """Scripts and background mode: paint all, wait (with a deadline), then show."""
        try:
            job = self._prepare(context).start()
        except (CaptureError, diffusion_job.JobSettingsError, WorkerError) as error:
            self.report({"ERROR"}, f"Silk: {error}")
            return {"CANCELLED"}
        if not job.done.wait(len(job.seeds) * PREVIEW_TIMEOUT + 60):
            worker_link.cancel_requested.set()
            self.report({"ERROR"}, "Silk: the variants did not finish in time")
            return {"CANCELLED"}
        return self._finish(context, job)

    def modal(self, context, event):
        job = self._job
        if event.type == "ESC":
            worker_link.cancel_requested.set()
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        finished = sum(picture is not None for picture in job.pictures)
        if finished != self._shown:  # a tile is done: show it
            show_grid(context.scene, job)
            self._shown = finished
        context.workspace.status_text_set(f"Silk variants: {job.current + 1}/{len(job.seeds)}, step "
                                          f"{job.step}/{job.steps} (Esc to stop)")
        if not job.done.is_set():
            return {"RUNNING_MODAL"}
        context.window_manager.event_timer_remove(self._timer)
        context.workspace.status_text_set(None)
        return self._finish(context, job)

    def _finish(self, context, job):
        image = show_grid(context.scene, job)
        result_history.show(image)
        redraw_silk_panels()
        if job.cancelled:
            self.report({"INFO"}, "Silk: variants stopped (the painted ones can be chosen)")
            return {"CANCELLED"}
        if job.error:
            self.report({"ERROR"}, f"Silk: {job.error}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Silk: {len(job.seeds)} variants painted; choose one with its number")
        return {"FINISHED"}


class SILK_OT_choose_variant(bpy.types.Operator):
    bl_idname = "silk.choose_variant"
    bl_label = "Choose Variant"
    bl_description = "Use this tile's seed (keyed at the shot's first frame when 'Key at Shot Start' is on)"
    bl_options = {"REGISTER", "UNDO"}

    index: IntProperty(name="Tile", default=0, min=0)

    @classmethod
    def poll(cls, context):
        image = grid_image(context.scene)
        return image is not None and SEEDS_KEY in image.keys()

    def execute(self, context):
        scene = context.scene
        seeds = list(grid_image(scene)[SEEDS_KEY])
        if not 0 <= self.index < len(seeds):
            self.report({"ERROR"}, f"Silk: there is no variant {self.index + 1} (the grid has {len(seeds)})")
            return {"CANCELLED"}
        settings = scene.silk
        settings.seed = int(seeds[self.index])
        if settings.variant_key_seed:
            start = job_settings.shot_of(scene, scene.frame_current).start
            settings.keyframe_insert("seed", frame=start)
            curve = walk_settings.fcurve(scene, "silk.seed")
            if curve is not None:  # a seed never eases between two keys: it jumps at each
                for point in curve.keyframe_points:
                    point.interpolation = "CONSTANT"
            where = f", keyed at frame {start}"
        elif walk_settings.fcurve(scene, "silk.seed") is not None:
            self.report({"WARNING"}, f"Silk: seed {seeds[self.index]} (variant {self.index + 1}); the seed is "
                                     "keyframed, so this holds until the frame changes: turn on Key at Shot Start")
            return {"FINISHED"}
        else:
            where = ""
        self.report({"INFO"}, f"Silk: seed {seeds[self.index]} (variant {self.index + 1}){where}")
        redraw_silk_panels()
        return {"FINISHED"}


class SILK_OT_image_prompt_key_add(AddItem, bpy.types.Operator):
    bl_idname = "silk.image_prompt_key_add"
    bl_label = "Add Image Prompt Key"
    bl_description = "Add a reference picture (IP-Adapter) reached at the current frame"
    collection, active = "image_prompt_keys", "active_image_prompt_key"

    def fill(self, context, key) -> None:
        key.frame = context.scene.frame_current
        space = context.space_data
        if space is not None and space.type == "IMAGE_EDITOR" and space.image is not None:
            key.image = space.image  # the picture the Image Editor shows


class SILK_OT_image_prompt_key_remove(RemoveSelectedItem, bpy.types.Operator):
    bl_idname = "silk.image_prompt_key_remove"
    bl_label = "Remove Image Prompt Key"
    bl_description = "Remove the selected image prompt key"
    collection, active = "image_prompt_keys", "active_image_prompt_key"


CLASSES = (SILK_OT_paint_variants, SILK_OT_choose_variant, SILK_OT_image_prompt_key_add,
           SILK_OT_image_prompt_key_remove)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
