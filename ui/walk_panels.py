"""Panels for image prompts (Prompt > Image Prompts) and the variant picker (the 3D Viewport's
and the Image Editor's Silk tabs)."""
import bpy

from .panels import SilkPanel, _label_lines, _list_with_buttons


class SILK_UL_image_prompt_keys(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_property, index=0, flt_flag=0):
        row = layout.row(align=True)
        row.prop(item, "frame", text="", emboss=False)
        row.label(text=item.image.name if item.image else "(no image)", icon="IMAGE_DATA")
        row.prop(item, "weight", text="", emboss=False)


class SILK_PT_image_prompts(SilkPanel, bpy.types.Panel):
    bl_label = "Image Prompts"
    bl_parent_id = "SILK_PT_prompt"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        settings = context.scene.silk
        _list_with_buttons(layout, "SILK_UL_image_prompt_keys", settings, "image_prompt_keys",
                           "active_image_prompt_key", "silk.image_prompt_key_add", "silk.image_prompt_key_remove")
        if 0 <= settings.active_image_prompt_key < len(settings.image_prompt_keys):
            key = settings.image_prompt_keys[settings.active_image_prompt_key]
            layout.template_ID(key, "image", open="image.open")
            column = layout.column(align=True)
            column.prop(key, "frame")
            column.prop(key, "weight")
        layout.use_property_split = True
        layout.prop(settings, "ip_adapter_scale")
        layout.prop(settings, "ip_adapter")
        layout.prop(settings, "ip_adapter_image_encoder")
        if not len(settings.image_prompt_keys):
            _label_lines(layout, "Add a key to steer the picture by a reference image; keys travel like prompt "
                                 "keys (Prompt Easing)")


def draw_variants(layout, scene) -> None:
    from ..operators.variants import SEEDS_KEY, grid_image  # here: operators import ui (through worker_link)

    settings = scene.silk
    row = layout.row(align=True)
    row.operator("silk.paint_variants", icon="IMGDISPLAY")
    row.prop(settings, "variant_count", text="")
    layout.prop(settings, "variant_key_seed")
    image = grid_image(scene)
    if image is None or SEEDS_KEY not in image.keys():
        return
    seeds = list(image[SEEDS_KEY])
    layout.label(text="Choose a variant:")
    row = layout.row(align=True)
    for index, seed in enumerate(seeds):
        button = row.operator("silk.choose_variant", text=str(index + 1), depress=int(seed) == settings.seed)
        button.index = index


class SILK_PT_variants_sidebar(bpy.types.Panel):
    bl_label = "Variants"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Silk"
    bl_parent_id = "SILK_PT_sidebar"

    def draw(self, context):
        draw_variants(self.layout, context.scene)


class SILK_PT_variants_image(bpy.types.Panel):
    bl_label = "Silk Variants"
    bl_space_type = "IMAGE_EDITOR"
    bl_region_type = "UI"
    bl_category = "Silk"

    def draw(self, context):
        draw_variants(self.layout, context.scene)


CLASSES = (SILK_UL_image_prompt_keys, SILK_PT_image_prompts, SILK_PT_variants_sidebar, SILK_PT_variants_image)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
