"""Load the repository as the ``silk`` package inside Blender's Python module.

Used by tests, benchmarks and the demo so they run the checkout itself; the
packaged extension is tested separately from the built zip.
"""
import atexit
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_silk(register: bool = True):
    if "silk" in sys.modules:
        module = sys.modules["silk"]
    else:
        spec = importlib.util.spec_from_file_location(
            "silk", os.path.join(ROOT, "__init__.py"), submodule_search_locations=[ROOT]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["silk"] = module
        spec.loader.exec_module(module)
    if register:
        import bpy

        if not hasattr(bpy.types.Scene, "silk"):
            module.register()
            # Blender 4.2's Python module crashes at exit (SIGSEGV) while any Python
            # render engine is still registered; unregister first.
            atexit.register(_unregister, module)
    return module


def _unregister(module) -> None:
    import bpy

    if hasattr(bpy.types.Scene, "silk"):
        module.unregister()


def set_multilayer_exr(scene) -> None:
    settings = scene.render.image_settings
    if hasattr(settings, "media_type"):  # Blender 5.0+
        settings.media_type = "MULTI_LAYER_IMAGE"
        settings.file_format = "OPEN_EXR_MULTILAYER"
    else:
        settings.file_format = "OPEN_EXR_MULTILAYER"
    settings.color_depth = "32"
    settings.exr_codec = "ZIP"
    if hasattr(settings, "use_exr_interleave"):
        # One interleaved part, as 4.x writes: 5.0's multi-part files fail to save
        # with a non-square pixel aspect ("Conflicting attributes ... pixelAspectRatio").
        settings.use_exr_interleave = True


def use_cycles_reference(scene) -> None:
    """Cycles set up as the exactness reference: 1 sample, point-like pixel filter."""
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 1
    scene.cycles.use_denoising = False
    scene.cycles.filter_width = 0.01
    scene.render.use_motion_blur = False
    for layer in scene.view_layers:
        layer.use_pass_z = True
        layer.use_pass_normal = True
        layer.use_pass_vector = True


def set_png(scene, color_mode: str = "RGB") -> None:
    settings = scene.render.image_settings
    if hasattr(settings, "media_type"):  # Blender 5.0+
        settings.media_type = "IMAGE"
    settings.file_format = "PNG"
    settings.color_mode = color_mode
    settings.color_depth = "8"
