"""Add and remove ControlNet units and LoRAs in ``scene.silk``."""
import bpy
from bpy.props import EnumProperty

from ..engine import settings as silk_settings


class SILK_OT_unit_add(bpy.types.Operator):
    bl_idname = "silk.unit_add"
    bl_label = "Add ControlNet Unit"
    bl_description = "Add a ControlNet unit"
    bl_options = {"REGISTER", "UNDO"}

    kind: EnumProperty(name="Type", items=silk_settings.UNIT_KINDS, default="CANNY")

    def execute(self, context):
        settings = context.scene.silk
        silk_settings.ensure_default_units(context.scene)
        unit = settings.units.add()
        unit.kind = self.kind
        unit.source = self.kind if self.kind in ("DEPTH", "NORMAL") else "DEPTH"
        settings.active_unit = len(settings.units) - 1
        return {"FINISHED"}


class SILK_OT_unit_remove(bpy.types.Operator):
    bl_idname = "silk.unit_remove"
    bl_label = "Remove ControlNet Unit"
    bl_description = "Remove the selected ControlNet unit"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return len(context.scene.silk.units) > 0

    def execute(self, context):
        settings = context.scene.silk
        settings.units.remove(min(settings.active_unit, len(settings.units) - 1))
        settings.units_initialized = True
        settings.active_unit = max(0, min(settings.active_unit, len(settings.units) - 1))
        return {"FINISHED"}


class SILK_OT_lora_add(bpy.types.Operator):
    bl_idname = "silk.lora_add"
    bl_label = "Add LoRA"
    bl_description = "Add a LoRA file with a weight"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        settings = context.scene.silk
        settings.loras.add()
        settings.active_lora = len(settings.loras) - 1
        return {"FINISHED"}


class SILK_OT_lora_remove(bpy.types.Operator):
    bl_idname = "silk.lora_remove"
    bl_label = "Remove LoRA"
    bl_description = "Remove the selected LoRA"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return len(context.scene.silk.loras) > 0

    def execute(self, context):
        settings = context.scene.silk
        settings.loras.remove(min(settings.active_lora, len(settings.loras) - 1))
        settings.active_lora = max(0, min(settings.active_lora, len(settings.loras) - 1))
        return {"FINISHED"}


CLASSES = (SILK_OT_unit_add, SILK_OT_unit_remove, SILK_OT_lora_add, SILK_OT_lora_remove)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
