"""The ``bpy`` side of latent walks and image prompts: keyframed values at any frame, and the
scene's image-prompt keys as plain data for ``image_prompts.py``."""
from __future__ import annotations

import bpy


def fcurve(id_data, data_path: str, index: int = 0):
    """The F-curve animating ``data_path`` of ``id_data``, or None (4.2's ``action.fcurves``,
    4.4+'s layered actions through the action slot's channel bag)."""
    animation = getattr(id_data, "animation_data", None)
    action = animation.action if animation is not None else None
    if action is None:
        return None
    if hasattr(action, "fcurves"):
        curves = action.fcurves
    else:
        from bpy_extras import anim_utils

        bag = anim_utils.action_get_channelbag_for_slot(action, animation.action_slot)
        curves = bag.fcurves if bag is not None else None
    return curves.find(data_path, index=index) if curves is not None else None


def drift_angle_reader(scene):
    """frame -> the DRIFT angle (radians) keyframed at that frame; without keys, the setting."""
    constant = float(scene.silk.noise_drift)
    curve = fcurve(scene.original if hasattr(scene, "original") else scene, "silk.noise_drift")
    if curve is None:
        return lambda _frame: constant
    low, high = 0.0, 1.5707963267948966  # the property's range: an F-curve may overshoot it

    def angle_at(frame: int) -> float:
        return min(high, max(low, float(curve.evaluate(frame))))

    return angle_at


def image_prompts(scene) -> tuple[list, dict]:
    """The image prompts of the scene's current frame, as ``JobSettings.image_prompts`` and
    ``ip_adapter`` (empty without keys)."""
    from .diffusion_job import JobSettingsError
    from .image_prompts import ImagePromptKey, image_prompt_mix, reference_picture
    from .job_settings import _image_pixels

    settings = scene.silk
    keys = []
    for key in settings.image_prompt_keys:
        if key.image is None:
            raise JobSettingsError(f"The image prompt key at frame {key.frame} has no image: choose one in the "
                                   "Image Prompts panel, or remove the key")
        keys.append(ImagePromptKey(key.frame, key.image, key.weight))
    mix = image_prompt_mix(keys, scene.frame_current, settings.prompt_easing)
    if not mix:
        return [], {}
    pictures = [{"image": reference_picture(_image_pixels(image)), "weight": float(weight)} for image, weight in mix]
    adapter = {"scale": float(settings.ip_adapter_scale)}
    for field, value in (("source", settings.ip_adapter), ("image_encoder", settings.ip_adapter_image_encoder)):
        value = value.strip()
        if value:
            adapter[field] = bpy.path.abspath(value) if value.startswith("//") else value
    return pictures, adapter
