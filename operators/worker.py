"""Operators for the diffusion worker's environment and logs."""
import os
import sys

import bpy
from bpy.props import EnumProperty

from ..bridge.environment import Installer, install_plan
from ..ui import preferences

_installer = None


def install_state() -> str:
    """One line for the UI about the current or last install."""
    if _installer is None:
        return ""
    progress = _installer.progress
    if progress.error:
        return f"Install failed: {progress.error}"
    if progress.done:
        return "Worker environment installed"
    return f"Installing ({progress.step}/{progress.steps}): {progress.label}"


def _base_python() -> str:
    """Blender's own Python (the venv's base); sys.executable is it in Blender 2.91 and later."""
    return sys.executable


class SILK_OT_install_worker_environment(bpy.types.Operator):
    bl_idname = "silk.install_worker_environment"
    bl_label = "Install Worker Environment"
    bl_description = ("Make a Python environment for the diffusion worker with torch (the build for this "
                      "machine's GPU), diffusers and the other libraries. Safe to run again")

    def execute(self, context):
        global _installer
        if _installer is not None and not _installer.progress.done:
            self.report({"WARNING"}, "An install is already running")
            return {"CANCELLED"}
        env_dir = preferences.worker_environment_dir()
        plan = install_plan(env_dir, _base_python())
        _installer = Installer(plan, preferences.install_log_path()).start()
        torch_step = next((step for step in plan if step.label.startswith("Installing torch")), None)
        if torch_step is not None and "CPU" in torch_step.label and "(" in torch_step.hint:
            # e.g. a GPU older than any CUDA build, or an Intel Mac: say so before the long install
            self.report({"WARNING"}, "Silk: " + torch_step.hint.split("(", 1)[1].rstrip(")"))
        if bpy.app.background:  # no UI to poll from: wait, with a deadline
            if not _installer.wait(timeout=4 * 3600):
                _installer.cancel()
            return self._finish()
        bpy.app.timers.register(_poll_install, first_interval=0.5)
        self.report({"INFO"}, f"Installing the worker environment ({torch_step.label if torch_step else 'libraries'}); "
                              f"log: {_installer.progress.log_path}")
        return {"FINISHED"}

    def _finish(self):
        if _installer.progress.error:
            self.report({"ERROR"}, f"Silk: {install_state()}")
            return {"CANCELLED"}
        self.report({"INFO"}, "Silk: worker environment installed")
        return {"FINISHED"}


def _poll_install():
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "PREFERENCES":
                area.tag_redraw()
    if _installer is None or _installer.progress.done:
        return None
    return 0.5


class SILK_OT_open_log(bpy.types.Operator):
    bl_idname = "silk.open_log"
    bl_label = "Open Log"
    bl_description = "Open the log file in the system's text viewer"

    which: EnumProperty(items=[("WORKER", "Worker", ""), ("INSTALL", "Install", "")], default="WORKER")

    def execute(self, context):
        path = preferences.install_log_path() if self.which == "INSTALL" else preferences.worker_log_path()
        if not os.path.exists(path):
            self.report({"WARNING"}, f"Silk: no log yet at {path}")
            return {"CANCELLED"}
        bpy.ops.wm.path_open(filepath=path)
        return {"FINISHED"}


CLASSES = (SILK_OT_install_worker_environment, SILK_OT_open_log)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
