"""Blender's command line, as far as Silk's Flamenco job type uses it, on Blender's Python module.

    python tests/farm/blender_cli.py -b -y shot.blend -S Scene -E SILK --python-exit-code 1 \\
        --python-expr "..." --render-output out/###### --render-format PNG -s 1 -e 4 -a --python-expr "..."

Tests have Blender as a Python module (``bpy``), not its executable, so a farm task's command
runs through this stand-in: a fresh process with Silk enabled (as on a farm node), its own
diffusion worker, and the arguments handled in order with the meaning Blender's manual gives
them: ``-b``/``-y`` (background, scripts allowed), the .blend file (opened), ``-S``, ``-E``,
``--python-exit-code``, ``--python-expr``, ``-o``/``--render-output``, ``-F``/``--render-format``,
``-s``, ``-e`` and ``-a`` (one animation render of ``-s..-e``; a failed render is reported and
Blender carries on with the next argument, exit code 0). Anything else is refused, so the job
type cannot drift from what is tested here unnoticed.

With SILK_TEST_FARM_LOG set, the process writes there (after every saved frame) how Silk made
each frame, its own pid and its worker's, for the tests to read. SILK_TEST_DIE_PAINTING=N
makes the process die (SIGKILL, as a node that loses power) while its worker paints frame N.
"""
import json
import os
import signal
import sys
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import bpy  # noqa: E402

from tools.blender_env import load_silk  # noqa: E402

STARTED = time.time()
_notes = []


@bpy.app.handlers.persistent  # kept when the .blend file is opened
def write_log(*_args) -> None:
    path = os.environ.get("SILK_TEST_FARM_LOG")
    if not path:
        return
    from silk.engine import render_engine, worker_link

    client = worker_link._client
    process = getattr(client, "process", None)
    notes = _notes + [note for note in render_engine.session.notes if note not in _notes]
    record = {"pid": os.getpid(), "worker_pid": process.pid if process is not None else None, "started": STARTED,
              "now": time.time(), "notes": [[note.frame, note.kind, note.source] for note in notes]}
    with open(path + ".part", "w") as handle:
        json.dump(record, handle)
    os.replace(path + ".part", path)


def die_while_painting(frame: int) -> None:
    from silk.engine import render_engine, worker_link

    def watch():
        while True:
            client = worker_link._client
            if any(note.frame == frame for note in render_engine.session.notes) and client and client.state == "busy":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.005)

    threading.Thread(target=watch, daemon=True).start()


def set_format(scene, file_format: str) -> None:
    settings = scene.render.image_settings
    if hasattr(settings, "media_type"):  # Blender 5.0+
        settings.media_type = "MULTI_LAYER_IMAGE" if file_format == "OPEN_EXR_MULTILAYER" else "IMAGE"
    settings.file_format = file_format


def main(argv) -> int:
    load_silk(register=True)  # Silk is installed and enabled on the node
    from silk.engine import render_engine

    bpy.app.handlers.render_write.append(write_log)
    if os.environ.get("SILK_TEST_DIE_PAINTING"):
        die_while_painting(int(os.environ["SILK_TEST_DIE_PAINTING"]))
    exit_code_on_error = 0
    arguments = list(argv)
    while arguments:
        argument = arguments.pop(0)
        scene = bpy.context.scene
        if argument in ("-b", "--background", "-y", "--enable-autoexec"):
            continue
        if not argument.startswith("-") and argument.endswith(".blend"):
            bpy.ops.wm.open_mainfile(filepath=argument)
        elif argument in ("-S", "--scene"):
            name = arguments.pop(0)
            if name != scene.name:  # bpy in the background has no window to switch scenes in
                print(f"blender_cli: only the file's active scene can be chosen here, not {name!r}")
                return 2
        elif argument in ("-E", "--engine"):
            name = arguments.pop(0)
            try:
                scene.render.engine = name
            except TypeError:
                print(f"\nError: engine not found '{name}'")
                return 1
        elif argument == "--python-exit-code":
            exit_code_on_error = int(arguments.pop(0))
        elif argument == "--python-expr":
            expression = arguments.pop(0)
            try:
                exec(compile(expression, "<string>", "exec"), {"__name__": "__main__"})
            except Exception:
                traceback.print_exc()
                if exit_code_on_error:
                    return exit_code_on_error
        elif argument in ("-o", "--render-output"):
            scene.render.filepath = arguments.pop(0)
        elif argument in ("-F", "--render-format"):
            set_format(scene, arguments.pop(0))
        elif argument in ("-s", "--frame-start"):
            scene.frame_start = int(arguments.pop(0))
        elif argument in ("-e", "--frame-end"):
            scene.frame_end = int(arguments.pop(0))
        elif argument in ("-a", "--render-anim"):
            try:
                bpy.ops.render.render(animation=True)
            except RuntimeError as error:  # Blender prints the render's error and goes on
                print(f"Error: {error}")
            _notes.extend(render_engine.session.notes)
            write_log()
        else:
            print(f"blender_cli: the argument {argument!r} is not supported by this stand-in")
            return 2
    return 0


def finish(code: int) -> None:
    """Exit as Blender's executable does: Silk unregistered (its worker stops), then out, with
    ``code``. Python's own teardown is skipped: Blender 4.2's module can crash in it (after its
    work is done), which says nothing about the executable this process stands in for."""
    from tools.blender_env import _unregister

    if write_log in bpy.app.handlers.render_write:
        bpy.app.handlers.render_write.remove(write_log)
    _unregister(sys.modules["silk"])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    finish(main(sys.argv[1:]))
