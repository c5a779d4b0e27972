"""Read Blender's multilayer EXR files (4.x interleaved or 5.x multi-part) into arrays."""
import numpy as np
import OpenEXR


def read_passes(path: str) -> dict:
    """``{pass name: (H, W, C) float32 array, rows top-down}`` for the first view layer."""
    passes: dict[str, dict[str, np.ndarray]] = {}
    with OpenEXR.File(str(path), separate_channels=True) as exr:
        for part in exr.parts:
            for full_name, channel in part.channels.items():
                pieces = full_name.split(".")
                if len(pieces) < 2:
                    continue
                pass_name, component = pieces[-2], pieces[-1]
                passes.setdefault(pass_name, {})[component] = np.asarray(channel.pixels, dtype=np.float32)
    order = {"Combined": "RGBA", "Depth": "Z", "Normal": "XYZ", "Vector": "XYZW", "Occlusion": "X"}
    out = {}
    for name, components in passes.items():
        keys = order.get(name) or "".join(sorted(components))
        keys = [k for k in keys if k in components] or sorted(components)
        out[name] = np.stack([components[k] for k in keys], axis=-1)
    return out
