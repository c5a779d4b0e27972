"""Silk's add-on preferences: which Python runs the worker, installing one, a remote worker."""
import os

import bpy
from bpy.props import EnumProperty, StringProperty

ADDON_ID = __package__.rpartition(".")[0]  # the extension's package, e.g. bl_ext.user_default.silk


def extension_folder(name: str) -> str:
    """A folder of Silk's own under Blender's user resources (created on demand)."""
    try:
        return bpy.utils.extension_path_user(ADDON_ID, path=name, create=True)
    except (ValueError, TypeError, AttributeError):  # running from a checkout, not as an extension
        path = os.path.join(bpy.utils.user_resource("DATAFILES", path="silk"), name)
        os.makedirs(path, exist_ok=True)
        return path


def worker_environment_dir() -> str:
    return extension_folder("worker-env")


def install_log_path() -> str:
    return os.path.join(extension_folder("logs"), "install-worker.log")


def worker_log_path() -> str:
    return os.path.join(extension_folder("logs"), "worker.log")


def preferences():
    addon = bpy.context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon else None


class SilkPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    worker_python: StringProperty(
        name="Worker Python", subtype="FILE_PATH",
        description="A Python with torch and diffusers to run the diffusion worker (empty: the worker "
                    "environment that 'Install worker environment' makes). SILK_WORKER_PYTHON overrides this")
    model_folder: StringProperty(
        name="Model Folder", subtype="DIR_PATH",
        description="Where the worker keeps downloaded models and the tiny test model (empty: ~/.cache/silk/models "
                    "and the Hugging Face cache)")
    remote_address: StringProperty(
        name="Remote Worker", description="host:port of a worker on another machine (empty: run one here)")
    remote_token: StringProperty(name="Token", subtype="PASSWORD",
                                 description="The remote worker's token (printed when it starts)")
    device: EnumProperty(name="Device", default="AUTO", items=[
        ("AUTO", "Automatic", "CUDA if present, then Apple MPS, then CPU"),
        ("CUDA", "CUDA", "An NVIDIA GPU"), ("MPS", "Apple MPS", "Apple silicon GPU"), ("CPU", "CPU", "Slow")])
    precision: EnumProperty(name="Precision", default="AUTO", items=[
        ("AUTO", "Automatic", "fp16 on CUDA, fp32 elsewhere"), ("FP16", "fp16", "Half precision"),
        ("BF16", "bf16", "bfloat16 (for cards that show black images in fp16)"), ("FP32", "fp32", "Full")])
    flamenco_scripts_folder: StringProperty(
        name="Flamenco Scripts Folder", subtype="DIR_PATH",
        description="The Flamenco Manager's scripts folder (beside its executable), where 'Save Flamenco Job Type' "
                    "puts Silk's job type")

    def draw(self, context):
        from ..operators import worker

        layout = self.layout
        box = layout.box()
        box.label(text="Worker", icon="SYSTEM")
        box.prop(self, "worker_python")
        row = box.row()
        row.operator(worker.SILK_OT_install_worker_environment.bl_idname, icon="IMPORT")
        row.operator(worker.SILK_OT_open_log.bl_idname, text="Install Log", icon="TEXT").which = "INSTALL"
        state = worker.install_state()
        if state:
            box.label(text=state, icon="INFO")
        box.prop(self, "model_folder")
        box.prop(self, "device")
        box.prop(self, "precision")
        box = layout.box()
        box.label(text="Remote worker (a GPU machine elsewhere)", icon="URL")
        box.prop(self, "remote_address")
        box.prop(self, "remote_token")
        box = layout.box()
        box.label(text="Render farm (Flamenco)", icon="NETWORK_DRIVE")
        box.prop(self, "flamenco_scripts_folder")
        box.operator("silk.farm_save_job_type", icon="FILE_SCRIPT")


CLASSES = (SilkPreferences,)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
