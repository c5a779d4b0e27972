"""Add and remove ControlNet units, LoRAs and prompt keys in ``scene.silk``; mark shot starts."""
import bpy
from bpy.props import EnumProperty

from ..engine import settings as silk_settings
from ..engine.job_settings import SHOT_MARKER_PREFIX


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


class SILK_OT_prompt_key_add(bpy.types.Operator):
    bl_idname = "silk.prompt_key_add"
    bl_label = "Add Prompt Key"
    bl_description = "Add a prompt key at the current frame (starting from the current prompt)"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        settings = context.scene.silk
        key = settings.prompt_keys.add()
        key.frame = context.scene.frame_current
        key.prompt, key.negative_prompt = settings.prompt, settings.negative_prompt
        settings.active_prompt_key = len(settings.prompt_keys) - 1
        return {"FINISHED"}


class SILK_OT_prompt_key_remove(bpy.types.Operator):
    bl_idname = "silk.prompt_key_remove"
    bl_label = "Remove Prompt Key"
    bl_description = "Remove the selected prompt key"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return len(context.scene.silk.prompt_keys) > 0

    def execute(self, context):
        settings = context.scene.silk
        settings.prompt_keys.remove(min(settings.active_prompt_key, len(settings.prompt_keys) - 1))
        settings.active_prompt_key = max(0, min(settings.active_prompt_key, len(settings.prompt_keys) - 1))
        return {"FINISHED"}


class SILK_OT_mark_shot_start(bpy.types.Operator):
    bl_idname = "silk.mark_shot_start"
    bl_label = "Mark Shot Start"
    bl_description = "Add a timeline marker named 'Shot' here: feedback restarts at this frame"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        scene = context.scene
        if any(marker.frame == scene.frame_current and marker.name.lower().startswith(SHOT_MARKER_PREFIX)
               for marker in scene.timeline_markers):
            self.report({"INFO"}, "Silk: a shot already starts here")
            return {"CANCELLED"}
        scene.timeline_markers.new("Shot", frame=scene.frame_current)
        return {"FINISHED"}


CLASSES = (SILK_OT_unit_add, SILK_OT_unit_remove, SILK_OT_lora_add, SILK_OT_lora_remove, SILK_OT_prompt_key_add,
           SILK_OT_prompt_key_remove, SILK_OT_mark_shot_start)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
