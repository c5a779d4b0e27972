"""Silk's per-scene settings: ``scene.silk``."""
import bpy
from bpy.props import EnumProperty, PointerProperty

MODES = [
    ("DIFFUSE", "Diffuse", "Paint each frame with Stable Diffusion, steered by the guides"),
    ("GUIDES", "Guides", "Show a guide as the image: exactly what the ControlNets see"),
]

GUIDE_PREVIEWS = [
    ("DEPTH", "Depth", "Inverse depth, near is white, normalised once per shot"),
    ("NORMAL", "Normal", "Camera-space normals in the BAE convention of the normal ControlNet"),
    ("MOTION", "Motion", "Backward motion to the previous frame as colour (hue = direction)"),
    ("OCCLUSION", "Occlusion", "White where the surface was not visible in the previous frame"),
]

DEPTH_NORMALIZATIONS = [
    ("SHOT", "Shot", "From the depths the shot's first frame shows (1st to 99th percentile)"),
    ("CLIP", "Camera Clip", "From the camera's clip start and end"),
]


class SilkSceneSettings(bpy.types.PropertyGroup):
    mode: EnumProperty(name="Mode", items=MODES, default="DIFFUSE",
                       description="What the Silk engine renders into Combined")
    guide_preview: EnumProperty(name="Guide", items=GUIDE_PREVIEWS, default="DEPTH",
                                description="Which guide the Guides mode shows")
    depth_normalization: EnumProperty(
        name="Depth Range", items=DEPTH_NORMALIZATIONS, default="SHOT",
        description="How depth is mapped to the depth ControlNet's picture, once per shot",
    )


CLASSES = (SilkSceneSettings,)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.silk = PointerProperty(type=SilkSceneSettings)


def unregister():
    del bpy.types.Scene.silk
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
