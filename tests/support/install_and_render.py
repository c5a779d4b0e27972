"""Run in a fresh Blender Python with BLENDER_USER_RESOURCES pointing at an empty folder:
install the built extension zip, enable it, render guides with it, and report as JSON."""
import json
import math
import sys

import bpy

zip_path, output = sys.argv[1], sys.argv[2]
bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
import addon_utils  # noqa: E402

enabled = [module.__name__ for module in addon_utils.modules() if addon_utils.check(module.__name__)[1]]
# (read_factory_settings would also reset the preferences and so disable the extension)
for obj in list(bpy.data.objects):
    bpy.data.objects.remove(obj)
scene = bpy.context.scene
scene.render.resolution_x, scene.render.resolution_y = 32, 24
camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
scene.collection.objects.link(camera)
camera.location = (0, -6, 1)
camera.rotation_euler = (math.radians(85), 0, 0)
scene.camera = camera
bpy.ops.mesh.primitive_monkey_add(location=(0, 0, 1))
scene.render.engine = "SILK"
scene.silk.mode = "GUIDES"
scene.silk.guide_preview = "NORMAL"
settings = scene.render.image_settings
if hasattr(settings, "media_type"):
    settings.media_type = "IMAGE"
settings.file_format = "PNG"
scene.render.filepath = output
bpy.ops.render.render(write_still=True)
module = sys.modules.get("bl_ext.user_default.silk")
kernels = sys.modules.get("bl_ext.user_default.silk.engine.guides.kernels")
import glob  # noqa: E402
import os  # noqa: E402

bundled = glob.glob(os.path.join(os.environ["BLENDER_USER_RESOURCES"], "extensions", ".local", "lib",
                                 "python*", "site-packages", "numba"))
print("RESULT " + json.dumps({
    "enabled": enabled,
    "module_file": getattr(module, "__file__", None),
    "engine": scene.render.engine,
    "kernels": bool(kernels and kernels.AVAILABLE),
    "bundled_numba": bundled,
}))
