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
