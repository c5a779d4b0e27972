"""Render Properties panels shown when the render engine is Silk."""
import bpy

from ..engine import render_engine

# Blender's own panels that apply to Silk renders as they are.
SHARED_PANELS = (
    "RENDER_PT_color_management",
    "RENDER_PT_color_management_curves",
    "RENDER_PT_color_management_display_settings",
    "RENDER_PT_color_management_white_balance",
)


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
        settings = context.scene.silk
        layout.prop(settings, "mode")
        for level, message in render_engine.last_reports[-3:]:
            layout.label(text=message, icon="ERROR" if level == "ERROR" else "INFO")


class SILK_PT_guides(SilkPanel, bpy.types.Panel):
    bl_label = "Guides"
    bl_parent_id = "SILK_PT_render"

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        settings = context.scene.silk
        layout.prop(settings, "guide_preview")
        layout.prop(settings, "depth_normalization")
        view = context.scene.view_settings.view_transform
        if settings.mode == "GUIDES" and view != "Standard":
            layout.label(text=f"View transform '{view}' changes the guide's colours;", icon="INFO")
            layout.label(text="use Standard to see exactly what the ControlNets see")


CLASSES = (SILK_PT_render, SILK_PT_guides)


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
