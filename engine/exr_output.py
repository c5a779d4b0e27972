"""Saving a loop's repainted picture over a rendered EXR frame, keeping every other pass.

Blender's ``Image.save_render`` cannot write a multilayer EXR from a plain image ("Did not
write, no Multilayer Image"), so the file is rewritten with Blender's bundled OpenImageIO: every
part (5.0 writes one per pass, 4.x one interleaved part) and channel is read, the Combined RGBA
channels are replaced, and the file is written back with the same specs (names, compression,
channel formats, metadata). No ``bpy``.
"""
from __future__ import annotations

import os
import sys

import numpy as np

COMBINED_CHANNELS = ("R", "G", "B", "A")


def open_image_io(blender_python_dir: str | None = None):
    """Blender's OpenImageIO module, or None where this Blender has none. Blender puts it on
    ``sys.path``; ``bpy`` as a Python module keeps it inside its own folder."""
    try:
        import OpenImageIO
        return OpenImageIO
    except ImportError:
        pass
    if not blender_python_dir:
        return None
    site = os.path.join(blender_python_dir, "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
    if not os.path.isdir(os.path.join(site, "OpenImageIO")):
        return None
    sys.path.append(site)
    try:
        import OpenImageIO
        return OpenImageIO
    except ImportError:
        return None
    finally:
        sys.path.remove(site)


def _combined_index(name: str) -> int | None:
    """Which of R, G, B, A a channel is when it belongs to the Combined pass: ``R`` in a
    single-layer file, ``<view layer>.Combined.R`` (or ``.<view>.``) in a multilayer one."""
    pieces = name.split(".")
    if pieces[-1] not in COMBINED_CHANNELS:
        return None
    if len(pieces) == 1 or "Combined" in pieces[:-1]:
        return COMBINED_CHANNELS.index(pieces[-1])
    return None


def replace_combined(oiio, path: str, rgba: np.ndarray) -> int:
    """Write ``rgba`` ((H, W, 4) scene-linear, rows top-down) into the Combined channels of the
    EXR at ``path``; returns how many channels were replaced. The file is replaced atomically,
    so a failure leaves the rendered frame as it was. Raises OSError."""
    source = oiio.ImageInput.open(path)
    if source is None:
        raise OSError(f"cannot read {path}: {oiio.geterror()}")
    specs, parts, replaced = [], [], 0
    try:
        subimage = 0
        while source.seek_subimage(subimage, 0):
            spec = oiio.ImageSpec(source.spec())
            pixels = source.read_image(subimage, 0, 0, spec.nchannels, "float")
            if pixels is None:
                raise OSError(f"cannot read {path}: {source.geterror()}")
            pixels = np.array(pixels, dtype=np.float32).reshape(spec.height, spec.width, spec.nchannels)
            for channel, name in enumerate(spec.channelnames):
                index = _combined_index(name)
                if index is not None:
                    if rgba.shape[:2] != pixels.shape[:2]:
                        raise OSError(f"{path} is {spec.width}x{spec.height}, the picture "
                                      f"{rgba.shape[1]}x{rgba.shape[0]}")
                    pixels[..., channel] = rgba[..., index]
                    replaced += 1
            specs.append(spec)
            parts.append(pixels)
            subimage += 1
    finally:
        source.close()
    if not replaced:
        raise OSError(f"{path} has no Combined channels")
    temporary = f"{path}.silk-{os.getpid()}.exr"
    target = oiio.ImageOutput.create(temporary)
    if target is None:
        raise OSError(f"cannot write {path}: {oiio.geterror()}")
    try:
        if not target.open(temporary, tuple(specs)):
            raise OSError(f"cannot write {path}: {target.geterror()}")
        for number, (spec, pixels) in enumerate(zip(specs, parts)):
            if number and not target.open(temporary, spec, "AppendSubimage"):
                raise OSError(f"cannot write {path}: {target.geterror()}")
            if not target.write_image(pixels):
                raise OSError(f"cannot write {path}: {target.geterror()}")
        target.close()
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return replaced
