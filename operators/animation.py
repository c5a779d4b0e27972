"""Operators for what the render warns about: one click to the settings that give the model's
exact picture."""
import bpy


def use_standard_view(scene) -> None:
    """Standard view transform, no look, exposure 0, gamma 1, no curves, dither 0: saved files and
    the Render Result then hold the model's picture (8-bit files within 1/255)."""
    view = scene.view_settings
    view.view_transform = "Standard"
    view.look = "None"
    view.exposure = 0.0
    view.gamma = 1.0
    view.use_curve_mapping = False
    scene.render.dither_intensity = 0.0


class SILK_OT_use_standard_view(bpy.types.Operator):
    bl_idname = "silk.use_standard_view"
    bl_label = "Use Standard View"
    bl_description = ("Set the Standard view transform (no look, exposure 0, gamma 1, no curves) and dither 0, "
                      "so saved frames hold exactly the model's picture")
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        use_standard_view(context.scene)
        return {"FINISHED"}


CLASSES = (SILK_OT_use_standard_view,)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
