"""sRGB transfer functions (IEC 61966-2-1), exact piecewise form.

Diffusion models see and produce display sRGB; Blender's Combined pass is
scene-linear. With the Standard view transform, Blender applies
``linear_to_srgb`` on save, so writing ``srgb_to_linear(picture)`` to Combined
gives back the picture.
"""
import numpy as np


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(values: np.ndarray) -> np.ndarray:
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, None)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * np.power(v, 1.0 / 2.4) - 0.055).astype(np.float32)
