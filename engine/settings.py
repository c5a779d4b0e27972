"""Silk's per-scene settings: ``scene.silk``.

Everything a frame needs is read from here at render time, so keyframes and
drivers on any numeric setting (seed, steps, guidance, unit weights...) schedule
it over an animation.
"""
import math

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty,
                       StringProperty)

from ..bridge import families, schema
from . import diffusion_job, windows

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

# F-curves hold float32 values and Blender rounds them to an int property by adding 0.5: only
# seeds below 2^23 survive being keyed exactly (measured on 4.2 and 5.0: a keyed 8388609 comes
# back as 8388610, 1817957071 as 1817957120: other pictures). Seeds Silk picks (the dice, the
# variant picker) stay below it.
SEED_LIMIT = 2 ** 23

DEPTH_NORMALIZATIONS = [
    ("SHOT", "Shot", "From the depths the shot's first frame shows (1st to 99th percentile)"),
    ("CLIP", "Camera Clip", "From the camera's clip start and end"),
]

# Menus from the registries (bridge/families.py, bridge/schema.py): one definition each.
SCHEDULERS = [(sampler.id, sampler.label, sampler.description) for sampler in families.SAMPLERS]

FAMILIES = [("AUTO", "Automatic", "What the model says it is (its model_index.json or its checkpoint's keys)")] + [
    (family.id.upper(), family.label, f"{family.label} and its fine-tunes") for family in families.FAMILIES.values()]

UNIT_KINDS = [(kind.id, kind.label, kind.description) for kind in families.UNIT_KINDS]

UNIT_SOURCES = [
    ("DEPTH", "Depth Guide", "Run the annotator on the depth guide"),
    ("NORMAL", "Normal Guide", "Run the annotator on the normal guide"),
    ("IMAGE", "Image", "Run the annotator on an image"),
]


class SilkControlUnit(bpy.types.PropertyGroup):
    enabled: BoolProperty(name="Enabled", default=True)
    kind: EnumProperty(name="Type", items=UNIT_KINDS, default="DEPTH")
    source: EnumProperty(name="Source", items=UNIT_SOURCES, default="DEPTH",
                         description="What an annotator unit (Canny, Line Art...) looks at")
    image: PointerProperty(name="Image", type=bpy.types.Image, description="The image for an Image source")
    controlnet: StringProperty(
        name="ControlNet", description="A hub repo id or a local folder (empty: the default for this type and the "
                                       "model's family)")
    weight: FloatProperty(name="Weight", default=schema.ControlUnit.weight, min=0.0, max=5.0, soft_max=2.0,
                          description="How strongly this unit steers the picture")
    start: FloatProperty(name="Start", default=0.0, min=0.0, max=1.0, subtype="FACTOR",
                         description="Fraction of the denoising steps after which this unit starts steering")
    end: FloatProperty(name="End", default=1.0, min=0.0, max=1.0, subtype="FACTOR",
                       description="Fraction of the denoising steps after which this unit stops steering")
    low_threshold: IntProperty(name="Low Threshold", default=100, min=0, max=255, description="Canny's low threshold")
    high_threshold: IntProperty(name="High Threshold", default=200, min=0, max=255,
                                description="Canny's high threshold")


class SilkLora(bpy.types.PropertyGroup):
    enabled: BoolProperty(name="Enabled", default=True)
    path: StringProperty(name="File", subtype="FILE_PATH", description="A LoRA .safetensors file")
    weight: FloatProperty(name="Weight", default=0.8, min=-5.0, max=5.0, soft_min=0.0, soft_max=1.5)


NOISE_MODES = [
    ("FIXED", "Fixed", "The same noise for every frame of a shot (the seed)"),
    ("WARPED", "Warped", "The noise travels with the scene's motion; fresh where surfaces appear"),
    ("RANDOM", "Random", "New noise every frame (seed + frame): for comparison, it flickers"),
    ("DRIFT", "Drift", "Each frame's noise is the previous frame's turned by the Drift angle toward fresh noise: "
                       "0 = fixed, 90 degrees = random; smooth change for independent frames"),
    ("LOOP", "Loop", "The noise walks a closed circle over the shot: the last frame flows into the first"),
]


class SilkPromptKey(bpy.types.PropertyGroup):
    frame: IntProperty(name="Frame", default=1, description="From this frame on, this prompt is reached")
    prompt: StringProperty(name="Prompt")
    negative_prompt: StringProperty(name="Negative Prompt")


class SilkImagePromptKey(bpy.types.PropertyGroup):
    frame: IntProperty(name="Frame", default=1, description="From this frame on, this image prompt is reached")
    image: PointerProperty(name="Image", type=bpy.types.Image, description="The reference picture (IP-Adapter)")
    weight: FloatProperty(name="Weight", default=1.0, min=0.0, max=4.0, soft_max=2.0,
                          description="How strongly this picture steers, relative to the IP-Adapter scale")


class SilkSceneSettings(bpy.types.PropertyGroup):
    mode: EnumProperty(name="Mode", items=MODES, default="DIFFUSE",
                       description="What the Silk engine renders into Combined")
    guide_preview: EnumProperty(name="Guide", items=GUIDE_PREVIEWS, default="DEPTH",
                                description="Which guide the Guides mode shows")
    depth_normalization: EnumProperty(
        name="Depth Range", items=DEPTH_NORMALIZATIONS, default="SHOT",
        description="How depth is mapped to the depth ControlNet's picture, once per shot",
    )

    # -- prompt -------------------------------------------------------------
    prompt: StringProperty(name="Prompt", default="a detailed oil painting, soft warm light",
                           description="What to paint")
    negative_prompt: StringProperty(name="Negative Prompt", default="blurry, low quality",
                                    description="What to steer away from")

    # -- model --------------------------------------------------------------
    model: StringProperty(
        name="Model", default=diffusion_job.DEFAULT_MODEL,
        description="'mini' (Silk's own small model, once trained: tools/mini), 'tiny' (offline test model, paints noise), a hub repo id, a local diffusers folder, or a "
                    ".safetensors/.ckpt checkpoint file")
    model_family: EnumProperty(name="Family", items=FAMILIES, default="AUTO",
                               description="Which ControlNets fit the model")
    units: CollectionProperty(type=SilkControlUnit)
    active_unit: IntProperty(name="Active Unit", default=0, min=0)
    units_initialized: BoolProperty(default=False, options={"HIDDEN"},
                                    description="The default units were added once (an empty list is then meant)")
    loras: CollectionProperty(type=SilkLora)
    active_lora: IntProperty(name="Active LoRA", default=0, min=0)

    # -- sampling -----------------------------------------------------------
    seed: IntProperty(name="Seed", default=42, min=0, description="The noise the picture grows from")
    steps: IntProperty(name="Steps", default=schema.default("steps"), min=1, max=150, description="Denoising steps")
    guidance_scale: FloatProperty(name="Guidance", default=schema.default("guidance"), min=0.0, max=30.0,
                                  description="How strictly to follow the prompt (classifier-free guidance)")
    scheduler: EnumProperty(name="Sampler", items=SCHEDULERS, default=schema.default("scheduler"))

    # -- animation ----------------------------------------------------------
    use_feedback: BoolProperty(
        name="Feedback", default=True,
        description="Start each frame from the previous painted frame, warped by the scene's exact motion "
                    "(off: every frame is painted on its own)")
    strength: FloatProperty(
        name="Strength", default=schema.default("strength"), min=0.05, max=1.0, subtype="FACTOR",
        description="How much of each frame is re-painted where the previous frame saw the surface "
                    "(1 = paint anew; pixels the previous frame did not see are always painted anew)")
    fusion: FloatProperty(
        name="Fusion", default=0.5, min=0.0, max=1.0, subtype="FACTOR",
        description="At every denoising step, pull pixels seen in the previous frame toward its warped "
                    "picture by this much (0 = off)")
    fusion_end: FloatProperty(
        name="Fusion End", default=1.0, min=0.0, max=1.0, subtype="FACTOR",
        description="Fraction of the denoising steps after which fusion stops, so the last steps refine the "
                    "frame freely instead of pulling it toward the resampled previous frame")
    noise_mode: EnumProperty(name="Noise", items=NOISE_MODES, default="FIXED")
    use_noise_pass: BoolProperty(
        name="Noise Pass", default=False,
        description="Write the latent noise each frame starts from as a 4-channel render pass 'Noise' (each "
                    "latent pixel over its 8x8 block); Guides mode computes it exactly as painting would")
    color_coherence: FloatProperty(
        name="Colour Coherence", default=1.0, min=0.0, max=1.0, subtype="FACTOR",
        description="Hold colours to the shot's first painting, against drift: the picture each frame starts "
                    "from (LAB statistics) and, surface by surface, its painting. Lower it where colours should "
                    "change over a shot")
    hold_to_start: FloatProperty(
        name="Hold to Start", default=0.5, min=0.0, max=1.0, subtype="FACTOR",
        description="Mix the shot's first painting, carried to each frame by the scene's exact motion, into the "
                    "picture the frame starts from, so surfaces keep their first look instead of drifting over a "
                    "long shot (0 = off; the shot's first frame is evaluated once per render job)")
    use_faithful_encoding: BoolProperty(
        name="Faithful Encoding", default=True,
        description="Encode each frame's start picture so that the model's VAE gives it back as it was, "
                    "instead of shifting its colours and contrast a little more at every frame of a shot "
                    "(two more VAE passes per frame)")
    cadence: IntProperty(
        name="Cadence", default=1, min=1, max=16,
        description="Paint every n-th frame; build the frames between from the two painted neighbours, "
                    "warped by exact motion (faster, softer)")
    use_loop: BoolProperty(
        name="Loop", default=False,
        description="A cyclic shot: after its last frame, repaint its first frames with feedback from the "
                    "last ones and cross-fade, so the take loops without a seam")
    loop_frames: IntProperty(name="Loop Frames", default=6, min=1, max=64,
                             description="How many first frames the loop repaints and cross-fades")
    prompt_keys: CollectionProperty(type=SilkPromptKey)
    active_prompt_key: IntProperty(name="Active Prompt Key", default=0, min=0)
    prompt_easing: FloatProperty(
        name="Prompt Easing", default=1.0, min=0.0, max=1.0, subtype="FACTOR",
        description="How prompts travel between keys: 0 = evenly, 1 = slow in and out (smoothstep)")
    # -- latent walks and image prompts (docs/animation.md) ------------------------------
    noise_drift: FloatProperty(
        name="Drift", default=math.radians(10.0), min=0.0, max=math.pi / 2, subtype="ANGLE",
        description="Drift noise: how far each frame's noise turns toward fresh noise (0 = fixed, 90 degrees = "
                    "random); keyframe it to speed up or slow down the walk")
    loop_turns: IntProperty(name="Loop Turns", default=1, min=1, max=16,
                            description="Loop noise: how many times the noise circles over the shot")
    image_prompt_keys: CollectionProperty(type=SilkImagePromptKey)
    active_image_prompt_key: IntProperty(name="Active Image Prompt Key", default=0, min=0)
    ip_adapter: StringProperty(
        name="IP-Adapter",
        description="The IP-Adapter for image prompts: a hub repo id, a folder or a .safetensors/.bin file (its "
                    "image encoder beside it in image_encoder/); empty: the default for the model's family")
    ip_adapter_image_encoder: StringProperty(
        name="Image Encoder", description="The CLIP image encoder folder or hub repo id, when it is not in the "
                                          "IP-Adapter's image_encoder/ folder")
    ip_adapter_scale: FloatProperty(
        name="Image Prompt Scale", default=0.6, min=0.0, max=2.0, soft_max=1.0,
        description="How strongly the image prompts steer the picture (keyframable)")
    variant_count: IntProperty(name="Variants", default=6, min=2, max=16,
                               description="How many seeds Paint Variants paints side by side")
    variant_key_seed: BoolProperty(
        name="Key at Shot Start", default=True,
        description="Choosing a variant keys its seed at the shot's first frame, so the shot animates from it")

    # -- motion module (a video model painting windows of frames: engine/windows.py) --------
    motion_module: StringProperty(
        name="Motion Module", default="",
        description="An AnimateDiff motion module paints windows of frames together (empty: paint frame by "
                    "frame): a hub repo id such as guoyww/animatediff-motion-adapter-v1-5-3, a local diffusers "
                    "folder, an AnimateDiff .safetensors/.ckpt file, or 'tiny' (offline test module)")
    context_frames: IntProperty(
        name="Context Frames", default=windows.DEFAULT_CONTEXT_FRAMES, min=2, max=32,
        description="Frames painted together in one window (motion modules are trained on 16; fewer need "
                    "less GPU memory)")
    context_overlap: IntProperty(
        name="Context Overlap", default=windows.DEFAULT_CONTEXT_OVERLAP, min=0, max=31,
        description="Frames each window shares with the one before: it starts from them, warped by the "
                    "scene's exact motion, and cross-fades over them")
    motion_loras: CollectionProperty(type=SilkLora)
    active_motion_lora: IntProperty(name="Active Motion LoRA", default=0, min=0)

    # -- worker -------------------------------------------------------------
    attention_slicing: BoolProperty(name="Attention Slicing", default=False,
                                    description="Less GPU memory, a little slower")
    vae_tiling: BoolProperty(name="VAE Tiling", default=False, description="Decode large frames in tiles")
    cpu_offload: BoolProperty(name="CPU Offload", default=False,
                              description="Keep only the running part of the model on the GPU (CUDA)")
    preview_scale: FloatProperty(name="Preview Size", default=0.5, min=0.1, max=1.0, subtype="FACTOR",
                                 description="Render preview size as a fraction of the render size")
    preview_steps: IntProperty(name="Preview Steps", default=8, min=1, max=150,
                               description="Denoising steps of a render preview")
    history_length: IntProperty(name="History", default=8, min=1, max=64,
                                description="How many F12 results the Image Editor keeps to step back through")


CLASSES = (SilkControlUnit, SilkLora, SilkPromptKey, SilkImagePromptKey, SilkSceneSettings)


def ensure_default_units(scene) -> None:
    """Give a scene that never had units the default Depth and Normal units."""
    settings = scene.silk
    if settings.units_initialized or len(settings.units):
        return
    for kind in families.DEFAULT_UNIT_KINDS:
        unit = settings.units.add()
        unit.kind = kind
        unit.source = kind
    settings.units_initialized = True


@bpy.app.handlers.persistent
def _ensure_units_everywhere(*_args) -> None:
    for scene in bpy.data.scenes:
        if scene.render.engine == "SILK" and not scene.silk.units_initialized:
            ensure_default_units(scene)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.silk = PointerProperty(type=SilkSceneSettings)
    bpy.app.handlers.load_post.append(_ensure_units_everywhere)
    bpy.app.handlers.depsgraph_update_post.append(_ensure_units_everywhere)


def unregister():
    for handlers in (bpy.app.handlers.load_post, bpy.app.handlers.depsgraph_update_post):
        if _ensure_units_everywhere in handlers:
            handlers.remove(_ensure_units_everywhere)
    del bpy.types.Scene.silk
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
