"""Silk's panels: Render Properties (engine Silk), the 3D Viewport's "Silk" sidebar tab and
the Image Editor's result history."""
import bpy

from ..engine import animation, diffusion_job, render_engine, worker_link

# Blender's own panels that apply to Silk renders as they are.
SHARED_PANELS = (
    "RENDER_PT_color_management",
    "RENDER_PT_color_management_curves",
    "RENDER_PT_color_management_display_settings",
    "RENDER_PT_color_management_white_balance",
)
STATUS_ICONS = {"stopped": "PAUSE", "starting": "SORTTIME", "ready": "CHECKMARK", "busy": "RENDER_ANIMATION",
                "error": "ERROR"}


# -- pieces shared by the Render Properties and the sidebar --------------------
def draw_prompt(layout, settings) -> None:
    layout.prop(settings, "prompt", text="")
    layout.prop(settings, "negative_prompt", text="", icon="REMOVE")


def draw_seed(layout, settings) -> None:
    row = layout.row(align=True)
    row.prop(settings, "seed")
    row.operator("silk.randomize_seed", text="", icon="FILE_REFRESH")


def draw_worker_status(layout) -> None:
    state, text = worker_link.status()
    column = layout.column(align=True)
    for index, line in enumerate(_wrap(text, 46)[:4]):
        column.label(text=line, icon=STATUS_ICONS.get(state, "INFO") if index == 0 else "BLANK1")
    row = layout.row(align=True)
    if state in ("stopped", "error"):
        row.operator("silk.start_worker", icon="PLAY")
    else:
        row.operator("silk.stop_worker", icon="PAUSE")
    row.operator("silk.open_log", text="Log", icon="TEXT").which = "WORKER"


def color_management_note(scene) -> str | None:
    """What the user will see differently from the model's picture, or None when exact."""
    view = scene.view_settings
    changes = []
    if view.view_transform != "Standard":
        changes.append(f"the '{view.view_transform}' view transform")
    if view.look not in ("None", ""):
        changes.append(f"the look '{view.look}'")
    if abs(view.exposure) > 1e-6 or abs(view.gamma - 1.0) > 1e-6:
        changes.append("exposure/gamma")
    if view.use_curve_mapping:
        changes.append("curves")
    if not changes:
        return None
    return "Blender shows and saves the painting through " + ", ".join(changes) + \
        ": colours differ from the model's picture. Use Standard to get it exactly"


def render_traps(scene) -> list[tuple[str, str]]:
    """(key, message) for each trap the next render would warn about (the render's own rules)."""
    silk = scene.silk
    scale = scene.render.resolution_percentage / 100
    width, height = int(scene.render.resolution_x * scale), int(scene.render.resolution_y * scale)
    diffusing = silk.mode == "DIFFUSE"
    return animation.render_warnings(
        scene.view_settings.view_transform, scene.render.dither_intensity, scene.frame_step, silk.use_feedback,
        width, height, diffusion_job.model_family(silk.model.strip(), silk.model_family) if diffusing else "",
        silk.scheduler, silk.fusion if diffusing else 0.0)


def draw_traps(layout, scene) -> None:
    """The render's warnings before rendering, with the one-click fix for colours."""
    traps = render_traps(scene)
    if not traps:
        return
    box = layout.box()
    for key, message in traps:
        _label_lines(box, message, icon="ERROR")
        if key == "view":
            box.operator("silk.use_standard_view", icon="COLOR")


def _wrap(text: str, width: int) -> list:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def _label_lines(layout, text: str, icon: str = "INFO", width: int = 52) -> None:
    column = layout.column(align=True)
    for index, line in enumerate(_wrap(text, width)):
        column.label(text=line, icon=icon if index == 0 else "BLANK1")


# -- Render Properties -----------------------------------------------------------
class SilkPanel:
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"
    COMPAT_ENGINES = {"SILK"}

    @classmethod
    def poll(cls, context):
        return context.engine in cls.COMPAT_ENGINES


class SILK_PT_render(SilkPanel, bpy.types.Panel):
    bl_label = "Silk"

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.prop(context.scene.silk, "mode")
        draw_traps(layout, context.scene)
        for level, message in render_engine.last_reports[-3:]:
            _label_lines(layout, message, icon="ERROR" if level == "ERROR" else "INFO")


class SILK_PT_prompt(SilkPanel, bpy.types.Panel):
    bl_label = "Prompt"
    bl_parent_id = "SILK_PT_render"

    def draw(self, context):
        draw_prompt(self.layout, context.scene.silk)


class SILK_UL_units(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_property, index=0, flt_flag=0):
        row = layout.row(align=True)
        row.prop(item, "enabled", text="")
        row.label(text=item.bl_rna.properties["kind"].enum_items[item.kind].name)
        row.prop(item, "weight", text="", emboss=False)


class SILK_UL_loras(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_property, index=0, flt_flag=0):
        row = layout.row(align=True)
        row.prop(item, "enabled", text="")
        row.label(text=bpy.path.basename(item.path) or "(no file)")
        row.prop(item, "weight", text="", emboss=False)


def _list_with_buttons(layout, list_type, settings, collection, active, add, remove):
    row = layout.row()
    row.template_list(list_type, "", settings, collection, settings, active, rows=3)
    column = row.column(align=True)
    column.operator(add, icon="ADD", text="")
    column.operator(remove, icon="REMOVE", text="")


class SILK_PT_model(SilkPanel, bpy.types.Panel):
    bl_label = "Model"
    bl_parent_id = "SILK_PT_render"

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        settings = context.scene.silk
        layout.prop(settings, "model")
        layout.prop(settings, "model_family")
        if settings.model.strip() == "tiny":
            _label_lines(layout, "'tiny' is a random-weight test model: it paints noise, offline and fast")
        elif settings.model.strip() == "mini":
            _label_lines(layout, "'mini' is Silk's own small offline model (tools/mini): its weights are not "
                                 "shipped yet; 'make train-mini' in a checkout makes them")
        layout.label(text="LoRAs")
        _list_with_buttons(layout, "SILK_UL_loras", settings, "loras", "active_lora", "silk.lora_add",
                           "silk.lora_remove")
        if 0 <= settings.active_lora < len(settings.loras):
            lora = settings.loras[settings.active_lora]
            layout.prop(lora, "path")
            layout.prop(lora, "weight")


class SILK_PT_units(SilkPanel, bpy.types.Panel):
    bl_label = "ControlNet Units"
    bl_parent_id = "SILK_PT_render"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.silk
        if not settings.units_initialized and not len(settings.units):
            layout.label(text="Depth and Normal at weight 1 (defaults)", icon="INFO")
            layout.operator("silk.unit_add", text="Add Unit", icon="ADD")
            return
        _list_with_buttons(layout, "SILK_UL_units", settings, "units", "active_unit", "silk.unit_add",
                           "silk.unit_remove")
        if not 0 <= settings.active_unit < len(settings.units):
            return
        unit = settings.units[settings.active_unit]
        layout.use_property_split = True
        layout.prop(unit, "kind")
        if unit.kind not in ("DEPTH", "NORMAL", "IMAGE"):
            layout.prop(unit, "source")
        if unit.kind == "IMAGE" or (unit.kind not in ("DEPTH", "NORMAL") and unit.source == "IMAGE"):
            layout.template_ID(unit, "image", open="image.open")
        if unit.kind == "CANNY":
            layout.prop(unit, "low_threshold")
            layout.prop(unit, "high_threshold")
        layout.prop(unit, "controlnet")
        layout.prop(unit, "weight")
        column = layout.column(align=True)
        column.prop(unit, "start")
        column.prop(unit, "end")


class SILK_PT_sampling(SilkPanel, bpy.types.Panel):
    bl_label = "Sampling"
    bl_parent_id = "SILK_PT_render"

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        settings = context.scene.silk
        draw_seed(layout, settings)
        layout.prop(settings, "steps")
        layout.prop(settings, "guidance_scale")
        layout.prop(settings, "scheduler")


class SILK_UL_prompt_keys(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_property, index=0, flt_flag=0):
        row = layout.row(align=True)
        row.prop(item, "frame", text="", emboss=False)
        row.label(text=item.prompt or "(empty prompt)")


class SILK_PT_animation(SilkPanel, bpy.types.Panel):
    bl_label = "Animation"
    bl_parent_id = "SILK_PT_render"

    def draw_header(self, context):
        self.layout.prop(context.scene.silk, "use_feedback", text="")

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        settings = context.scene.silk
        column = layout.column()
        column.active = settings.use_feedback
        column.prop(settings, "strength")
        column.prop(settings, "fusion")
        sub = column.column()
        sub.active = settings.fusion > 0
        sub.prop(settings, "fusion_end")
        column.prop(settings, "noise_mode")
        if settings.noise_mode in ("DRIFT", "LOOP"):  # latent walks (engine/latent_walk.py)
            column.prop(settings, "noise_drift" if settings.noise_mode == "DRIFT" else "loop_turns")
        column.prop(settings, "color_coherence")
        column.prop(settings, "hold_to_start")
        column.prop(settings, "use_faithful_encoding")
        column.prop(settings, "cadence")
        row = column.row(heading="Loop")
        row.prop(settings, "use_loop", text="")
        sub = row.row()
        sub.active = settings.use_loop
        sub.prop(settings, "loop_frames", text="Frames")
        layout.operator("silk.mark_shot_start", icon="MARKER_HLT")


class SILK_PT_motion(SilkPanel, bpy.types.Panel):
    bl_label = "Motion Module"
    bl_parent_id = "SILK_PT_animation"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        settings = context.scene.silk
        layout.prop(settings, "motion_module", text="Module")
        column = layout.column(align=True)
        column.active = bool(settings.motion_module.strip())
        column.prop(settings, "context_frames")
        column.prop(settings, "context_overlap", text="Overlap")
        if settings.motion_module.strip() and settings.context_overlap >= settings.context_frames:
            _label_lines(layout, "The overlap must be smaller than the window: it is cut to "
                         f"{settings.context_frames - 1}", icon="ERROR")
        layout.label(text="Motion LoRAs")
        _list_with_buttons(layout, "SILK_UL_loras", settings, "motion_loras", "active_motion_lora",
                           "silk.motion_lora_add", "silk.motion_lora_remove")
        if 0 <= settings.active_motion_lora < len(settings.motion_loras):
            lora = settings.motion_loras[settings.active_motion_lora]
            layout.prop(lora, "path")
            layout.prop(lora, "weight")
        if settings.motion_module.strip() == "tiny":
            _label_lines(layout, "'tiny' is a random-weight test module: offline and fast, it paints noise")


class SILK_PT_prompt_schedule(SilkPanel, bpy.types.Panel):
    bl_label = "Prompt Schedule"
    bl_parent_id = "SILK_PT_prompt"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        settings = context.scene.silk
        _list_with_buttons(layout, "SILK_UL_prompt_keys", settings, "prompt_keys", "active_prompt_key",
                           "silk.prompt_key_add", "silk.prompt_key_remove")
        if 0 <= settings.active_prompt_key < len(settings.prompt_keys):
            key = settings.prompt_keys[settings.active_prompt_key]
            layout.prop(key, "frame")
            layout.prop(key, "prompt", text="")
            layout.prop(key, "negative_prompt", text="", icon="REMOVE")
        layout.use_property_split = True
        layout.prop(settings, "prompt_easing")
        if not len(settings.prompt_keys):
            _label_lines(layout, "Without keys the prompt above holds for every frame")


class SILK_PT_guides(SilkPanel, bpy.types.Panel):
    bl_label = "Guides"
    bl_parent_id = "SILK_PT_render"

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        settings = context.scene.silk
        layout.prop(settings, "guide_preview")
        layout.prop(settings, "depth_normalization")
        layout.prop(settings, "use_noise_pass")
        note = color_management_note(context.scene)
        if note:
            _label_lines(layout, note)
            layout.operator("silk.use_standard_view", icon="COLOR")


class SILK_PT_worker(SilkPanel, bpy.types.Panel):
    bl_label = "Worker"
    bl_parent_id = "SILK_PT_render"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.silk
        draw_worker_status(layout)
        layout.use_property_split = True
        column = layout.column(heading="Memory")
        column.prop(settings, "attention_slicing")
        column.prop(settings, "vae_tiling")
        column.prop(settings, "cpu_offload")
        layout.prop(settings, "preview_scale")
        layout.prop(settings, "preview_steps")
        layout.prop(settings, "history_length")


# -- 3D Viewport sidebar -----------------------------------------------------------
class SILK_PT_sidebar(bpy.types.Panel):
    bl_label = "Silk"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Silk"

    def draw(self, context):
        layout = self.layout
        scene = context.scene
        settings = scene.silk
        if scene.render.engine != "SILK":
            layout.label(text="The render engine is not Silk", icon="INFO")
            layout.prop(scene.render, "engine", text="")
        draw_prompt(layout, settings)
        column = layout.column()
        column.use_property_split = True
        draw_seed(column, settings)
        column.prop(settings, "steps")
        column.prop(settings, "guidance_scale")
        if settings.use_feedback:
            column.prop(settings, "strength")
            column.prop(settings, "fusion")
        draw_traps(layout, scene)
        if settings.units_initialized or len(settings.units):
            for unit in settings.units:
                if unit.enabled:
                    label = unit.bl_rna.properties["kind"].enum_items[unit.kind].name
                    column.prop(unit, "weight", text=label)
        row = layout.row(align=True)
        row.operator("silk.render_preview", icon="RENDER_STILL")
        row.operator("silk.cancel", text="", icon="CANCEL")
        layout.separator()
        draw_worker_status(layout)


# -- Image Editor: step through results -----------------------------------------------
class SILK_PT_history(bpy.types.Panel):
    bl_label = "Silk Results"
    bl_space_type = "IMAGE_EDITOR"
    bl_region_type = "UI"
    bl_category = "Silk"

    def draw(self, context):
        layout = self.layout
        image = context.space_data.image
        if image is not None and "silk_history" in image.keys():
            layout.label(text=f"Frame {image.get('silk_frame')}, result #{image['silk_history']}")
        row = layout.row(align=True)
        row.operator("silk.history_step", text="Older", icon="TRIA_LEFT").direction = -1
        row.operator("silk.history_step", text="Newer", icon="TRIA_RIGHT").direction = 1


CLASSES = (SILK_UL_units, SILK_UL_loras, SILK_UL_prompt_keys, SILK_PT_render, SILK_PT_prompt,
           SILK_PT_prompt_schedule, SILK_PT_model, SILK_PT_units, SILK_PT_sampling, SILK_PT_animation, SILK_PT_motion,
           SILK_PT_guides,
           SILK_PT_worker, SILK_PT_sidebar, SILK_PT_history)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    for name in SHARED_PANELS:
        panel = getattr(bpy.types, name, None)
        if panel is not None and hasattr(panel, "COMPAT_ENGINES"):
            panel.COMPAT_ENGINES.add("SILK")


def unregister():
    for name in SHARED_PANELS:
        panel = getattr(bpy.types, name, None)
        if panel is not None and hasattr(panel, "COMPAT_ENGINES"):
            panel.COMPAT_ENGINES.discard("SILK")
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
