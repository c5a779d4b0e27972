"""The variant picker: paint several seeds of the current frame side by side, then choose one
(it becomes the seed, keyed at the shot's first frame if wanted). And the image-prompt keys."""
from __future__ import annotations

import dataclasses
import random
import threading
import time

import bpy
from bpy.props import IntProperty

from ..engine import job_settings, result_history, variants, walk_settings, worker_link
from ..engine.settings import SEED_LIMIT  # seeds a keyframe holds exactly
from .render import PREVIEW_TIMEOUT, PreviewJob, SILK_OT_render_preview, WorkerJobOperator, redraw_silk_panels
from .units import AddItem, RemoveSelectedItem

SEEDS_KEY = "silk_variant_seeds"  # the grid image's custom property: the seed of each tile


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
    """The variants painted one after the other on a thread, each as a Render Preview job; the
    operator polls it."""

    def __init__(self, worker, job, request, seeds):
        self.worker, self.job, self.request = worker, job, request
        self.width, self.height = request.width, request.height
        self.seeds = seeds
        self.pictures = [None] * len(seeds)
        self.current = 0  # the tile being painted
        self.tile: PreviewJob | None = None
        self.error = None
        self.cancelled = False
        self.done = threading.Event()

    @property
    def step(self) -> int:
        return self.tile.step if self.tile is not None else 0

    @property
    def steps(self) -> int:
        return self.tile.steps if self.tile is not None else self.job.steps

    def start(self) -> "VariantsJob":
        threading.Thread(target=self._run, name="silk-variants", daemon=True).start()
        return self

    def _run(self) -> None:
        try:
            for index, seed in enumerate(self.seeds):
                if index and worker_link.cancel_requested.is_set():  # Esc between two tiles
                    self.cancelled = True
                    return
                self.current = index
                self.tile = PreviewJob(self.worker, dataclasses.replace(self.job, seed=seed),
                                       dataclasses.replace(self.request, seed=seed))
                self.tile._run()  # on this thread: takes the worker, paints, lets go
                if self.tile.cancelled or self.tile.error:
                    self.cancelled, self.error = self.tile.cancelled, self.tile.error
                    return
                self.pictures[index] = self.tile.picture
        finally:
            self.done.set()


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


class SILK_OT_paint_variants(WorkerJobOperator, bpy.types.Operator):
    bl_idname = "silk.paint_variants"
    bl_label = "Paint Variants"
    bl_description = ("Paint the current frame with several seeds side by side in the Image Editor (preview size, "
                      "full steps); then choose one with the numbered buttons. Esc stops")

    def _prepare(self, context) -> VariantsJob:
        preview = SILK_OT_render_preview._prepare(self, context)  # the same request and checks as a preview
        settings = context.scene.silk
        seeds = variant_seeds(settings.seed, settings.variant_count)
        # Preview size, but the render's full step count.
        return VariantsJob(preview.worker, dataclasses.replace(preview.job, steps=settings.steps),
                           dataclasses.replace(preview.request, steps=settings.steps), seeds)

    def _wait_seconds(self, job) -> float:
        return len(job.seeds) * PREVIEW_TIMEOUT + 60

    def _started(self, context, job) -> None:
        result_history.show(show_grid(context.scene, job))
        self._shown = 0

    def _progress(self, context, job) -> str:
        finished = sum(picture is not None for picture in job.pictures)
        if finished != self._shown:  # a tile is done: show it
            show_grid(context.scene, job)
            self._shown = finished
        return f"Silk variants: {job.current + 1}/{len(job.seeds)}, step {job.step}/{job.steps} (Esc to stop)"

    def _finish(self, context, job):
        image = show_grid(context.scene, job)
        result_history.show(image)
        redraw_silk_panels()
        if self._ended_early(job, "variants stopped (the painted ones can be chosen)"):
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


class SILK_OT_choose_variant_at(bpy.types.Operator):
    bl_idname = "silk.choose_variant_at"
    bl_label = "Choose Variant Here"
    bl_description = "Choose the variant under the mouse (double-click a tile of the variant grid)"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        space = context.space_data
        return (space is not None and space.type == "IMAGE_EDITOR" and space.image is not None
                and space.image == grid_image(context.scene) and SEEDS_KEY in space.image.keys())

    def invoke(self, context, event):
        image = context.space_data.image
        tile_width, tile_height = image.get("silk_variant_tile", (0, 0))
        u, v = context.region.view2d.region_to_view(event.mouse_region_x, event.mouse_region_y)
        index = variants.tile_at_view(u, v, len(image[SEEDS_KEY]), tile_width, tile_height) if tile_width else None
        if index is None:
            return {"PASS_THROUGH"}  # not on a tile: the Image Editor's own double-click
        return bpy.ops.silk.choose_variant(index=index)


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


CLASSES = (SILK_OT_paint_variants, SILK_OT_choose_variant, SILK_OT_choose_variant_at, SILK_OT_image_prompt_key_add,
           SILK_OT_image_prompt_key_remove)
_keymaps: list = []


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    keyconfig = bpy.context.window_manager.keyconfigs.addon
    if keyconfig is not None:  # None in background mode
        keymap = keyconfig.keymaps.new(name="Image", space_type="IMAGE_EDITOR")
        _keymaps.append((keymap, keymap.keymap_items.new(SILK_OT_choose_variant_at.bl_idname, "LEFTMOUSE",
                                                         "DOUBLE_CLICK")))


def unregister():
    for keymap, item in _keymaps:
        keymap.keymap_items.remove(item)
    _keymaps.clear()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
