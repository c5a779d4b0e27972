"""Add and remove ControlNet units, LoRAs and prompt keys in ``scene.silk``; mark shot starts."""
import bpy
from bpy.props import EnumProperty

from ..engine import settings as silk_settings
from ..engine.job_settings import SHOT_MARKER_PREFIX


class CollectionOperator:
    """Shared by the add and remove operators of ``scene.silk``'s lists: ``collection``
    names the list, ``active`` the index property of its selected item."""

    bl_options = {"REGISTER", "UNDO"}
    collection = ""
    active = ""

    def items(self, context):
        return getattr(context.scene.silk, self.collection)

    def select(self, context, index: int) -> None:
        setattr(context.scene.silk, self.active, max(0, min(index, len(self.items(context)) - 1)))


class AddItem(CollectionOperator):
    def execute(self, context):
        item = self.items(context).add()
        self.fill(context, item)
        self.select(context, len(self.items(context)) - 1)
        return {"FINISHED"}

    def fill(self, context, item) -> None:
        pass


class RemoveSelectedItem(CollectionOperator):
    @classmethod
    def poll(cls, context):
        return len(getattr(context.scene.silk, cls.collection)) > 0

    def execute(self, context):
        items = self.items(context)
        selected = getattr(context.scene.silk, self.active)
        items.remove(min(selected, len(items) - 1))
        self.select(context, selected)
        return {"FINISHED"}


class SILK_OT_unit_add(AddItem, bpy.types.Operator):
    bl_idname = "silk.unit_add"
    bl_label = "Add ControlNet Unit"
    bl_description = "Add a ControlNet unit"
    collection, active = "units", "active_unit"

    kind: EnumProperty(name="Type", items=silk_settings.UNIT_KINDS, default="CANNY")

    def execute(self, context):
        silk_settings.ensure_default_units(context.scene)  # the defaults first, then this one
        return super().execute(context)

    def fill(self, context, unit) -> None:
        unit.kind = self.kind
        unit.source = self.kind if self.kind in ("DEPTH", "NORMAL") else "DEPTH"


class SILK_OT_unit_remove(RemoveSelectedItem, bpy.types.Operator):
    bl_idname = "silk.unit_remove"
    bl_label = "Remove ControlNet Unit"
    bl_description = "Remove the selected ControlNet unit"
    collection, active = "units", "active_unit"

    def execute(self, context):
        context.scene.silk.units_initialized = True  # an empty list is now meant, not "defaults"
        return super().execute(context)


class SILK_OT_lora_add(AddItem, bpy.types.Operator):
    bl_idname = "silk.lora_add"
    bl_label = "Add LoRA"
    bl_description = "Add a LoRA file with a weight"
    collection, active = "loras", "active_lora"


class SILK_OT_lora_remove(RemoveSelectedItem, bpy.types.Operator):
    bl_idname = "silk.lora_remove"
    bl_label = "Remove LoRA"
    bl_description = "Remove the selected LoRA"
    collection, active = "loras", "active_lora"


class SILK_OT_motion_lora_add(AddItem, bpy.types.Operator):
    bl_idname = "silk.motion_lora_add"
    bl_label = "Add Motion LoRA"
    bl_description = "Add a motion LoRA file (camera pans, zooms...) with a weight"
    collection, active = "motion_loras", "active_motion_lora"


class SILK_OT_motion_lora_remove(RemoveSelectedItem, bpy.types.Operator):
    bl_idname = "silk.motion_lora_remove"
    bl_label = "Remove Motion LoRA"
    bl_description = "Remove the selected motion LoRA"
    collection, active = "motion_loras", "active_motion_lora"


class SILK_OT_prompt_key_add(AddItem, bpy.types.Operator):
    bl_idname = "silk.prompt_key_add"
    bl_label = "Add Prompt Key"
    bl_description = "Add a prompt key at the current frame (starting from the current prompt)"
    collection, active = "prompt_keys", "active_prompt_key"

    def fill(self, context, key) -> None:
        settings = context.scene.silk
        key.frame = context.scene.frame_current
        key.prompt, key.negative_prompt = settings.prompt, settings.negative_prompt


class SILK_OT_prompt_key_remove(RemoveSelectedItem, bpy.types.Operator):
    bl_idname = "silk.prompt_key_remove"
    bl_label = "Remove Prompt Key"
    bl_description = "Remove the selected prompt key"
    collection, active = "prompt_keys", "active_prompt_key"


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


CLASSES = (SILK_OT_unit_add, SILK_OT_unit_remove, SILK_OT_lora_add, SILK_OT_lora_remove, SILK_OT_motion_lora_add,
           SILK_OT_motion_lora_remove, SILK_OT_prompt_key_add, SILK_OT_prompt_key_remove, SILK_OT_mark_shot_start)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
