"""Silk on a farm, for real in Blender's module: the shot list the job type evaluates, and
farm tasks run as separate Blender processes (two nodes at once, each with its own worker,
model `tiny`), chained chunks, a node killed mid-chunk. Flamenco itself is stood in for by
tests/farm/flamenco.py (see there); the job compiler runs under Node.js."""
import json
import os
import signal
import subprocess
import time

import bpy
import numpy as np
import pytest

from silk import farm
from silk.engine import job_settings, takes
from tests.blender.test_animation import editing_strips, strip_range
from tests.blender.test_diffusion import diffuse_scene
from tests.farm import flamenco
from tests.support import scenes
from tests.support.scenes import read_png
from tools.blender_env import set_png


def farm_scene(frames, width=48, height=32):
    scene = diffuse_scene(width, height, steps=2)
    scene.frame_start, scene.frame_end = 1, frames
    scenes.keyframe(scene.camera, "location", [(1, (0, -8, 2)), (frames, (0.5, -7.5, 2.1))])
    set_png(scene)
    return scene


def submit(scene, tmp_path, **chosen):
    """Save the scene as the farm's copy of the .blend, evaluate the job type's settings as
    Flamenco's add-on does, compile the job."""
    blendfile = str(tmp_path / "shot.flamenco.blend")
    bpy.ops.wm.save_as_mainfile(filepath=blendfile, copy=True)
    settings = flamenco.submit(bpy.context, blendfile, render_output_root=str(tmp_path / "farm"), **chosen)
    job = flamenco.compile_job(settings)
    assert job["error"] is None, job["error"]
    return job


def job_folder(job):
    return os.path.dirname(job["settings"]["render_output_path"])


def frame_file(job, frame):
    return os.path.join(job_folder(job), f"{frame:06d}.png")


def overlap(first, second):
    return min(first["now"], second["now"]) - max(first["started"], second["started"])


def test_the_shot_list_is_the_engines_cuts_with_keys_loops_and_chunks(silk):
    scene = farm_scene(20)
    scene.timeline_markers.new("Shot 2", frame=8)
    other = bpy.data.objects.new("Camera 2", scene.camera.data.copy())
    scene.collection.objects.link(other)
    scene.timeline_markers.new("A", frame=1).camera = scene.camera
    scene.timeline_markers.new("B", frame=15).camera = other
    scene.silk.cadence = 3
    scene.silk.use_loop, scene.silk.loop_frames = True, 2
    shots = farm.shots(scene, max_frames=4)
    assert [(shot.start, shot.end) for shot in shots] == [(1, 7), (8, 14), (15, 20)]
    for shot in shots:  # every frame's shot is the one the engine restarts feedback for
        for frame in range(shot.start, shot.end + 1):
            assert job_settings.shot_of(scene, frame) == job_settings.schedule.Shot(shot.start, shot.end)
    assert shots[0].keys == (1, 4, 7) and shots[0].loop_frames == (1, 2)
    assert [(chunk.first, chunk.last) for chunk in shots[0].chunks] == [(1, 4), (5, 7)]
    # What Flamenco's add-on evaluates at submission is the same list.
    listed = bpy.types.SILK_OT_farm_shots.as_json
    assert json.loads(listed(scene, 4))["shots"] == [shot.as_dict() for shot in shots]
    assert bpy.ops.silk.farm_shots(max_frames=4) == {"FINISHED"}
    scene.frame_step = 2
    with pytest.raises(ValueError, match="frame step"):
        listed(scene, 4)
    with pytest.raises(RuntimeError, match="frame step"):
        bpy.ops.silk.farm_shots()


def test_two_shots_on_two_nodes_at_once_paint_each_shot_in_order(silk, tmp_path):
    scene = farm_scene(6)
    scene.timeline_markers.new("Shot 2", frame=4)
    job = submit(scene, tmp_path, max_frames_per_task=0)
    names = [task["name"] for task in job["tasks"]]
    assert names == ["shot 1-3", "shot 4-6", "video"]
    logs = flamenco.run_tasks(job["tasks"], workers=2, log_folder=tmp_path / "logs")
    first, second = logs["shot 1-3"], logs["shot 4-6"]
    assert overlap(first, second) > 0, "the two nodes did not run at the same time"
    assert first["pid"] != second["pid"] and first["worker_pid"] != second["worker_pid"]  # a worker each
    assert first["notes"] == [[1, "fresh", None], [2, "feedback", 1], [3, "feedback", 2]]
    assert second["notes"] == [[4, "fresh", None], [5, "feedback", 4], [6, "feedback", 5]]
    assert all(os.path.isfile(frame_file(job, frame)) for frame in range(1, 7))
    # The take appears when the job ends: its records are beside the frames.
    assert bpy.ops.silk.farm_load_take(directory=job_folder(job)) == {"FINISHED"}
    strip = max(editing_strips(scene), key=lambda strip: strip[takes.TAKE_KEY])
    assert strip_range(strip) == (1, 6) and "seed 42" in strip.name
    assert bpy.ops.silk.farm_load_take(directory=job_folder(job)) == {"FINISHED"}  # again: replaced, not added
    assert len([s for s in editing_strips(scene) if s.get(takes.OUTPUT_KEY) == job_folder(job)]) == 1


def test_a_long_shot_in_chained_chunks_and_a_killed_chunk_continue_seamlessly(silk, tmp_path):
    scene = farm_scene(6)
    scene.silk.cadence = 2  # keys 1, 3, 5, 6: a chunk's first frame is built between keys
    # The same shot painted in one go, here, is the reference.
    scene.render.filepath = str(tmp_path / "reference" / "f_")
    bpy.ops.render.render(animation=True)
    reference = [read_png(str(tmp_path / "reference" / f"f_{frame:04d}.png")) for frame in range(1, 7)]

    job = submit(scene, tmp_path, max_frames_per_task=3)
    first_chunk, second_chunk = [task for task in job["tasks"] if task["type"] == "blender"]
    assert (first_chunk["name"], second_chunk["dependencies"]) == ("shot 1-6 part 1/2 (1-3)", [first_chunk["name"]])
    logs = flamenco.run_tasks([first_chunk], workers=1, log_folder=tmp_path / "logs")
    assert logs[first_chunk["name"]]["notes"] == [[1, "fresh", None], [3, "feedback", 1], [2, "in-between", 1]]

    # The second chunk's node dies while painting frame 6; the manager runs the task again.
    log = tmp_path / "killed.json"
    process = subprocess.run(flamenco.command_line(second_chunk["commands"][0]), stdout=subprocess.DEVNULL,
                             stderr=subprocess.STDOUT, timeout=300,
                             env={**os.environ, "SILK_TEST_FARM_LOG": str(log), "SILK_TEST_DIE_PAINTING": "6"})
    assert process.returncode == -signal.SIGKILL
    killed = json.loads(log.read_text())
    # Frame 4 is built between key 3 (the first chunk's, read from disk) and key 5 (painted ahead).
    assert killed["notes"] == [[5, "feedback", 3], [4, "in-between", 3]]
    assert os.path.exists(frame_file(job, 5)) and not os.path.exists(frame_file(job, 6))
    deadline = time.monotonic() + 10  # the dead node's worker goes away by itself (it frees its GPU)
    while _alive(killed["worker_pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(killed["worker_pid"])
    finished = {frame: os.path.getmtime(frame_file(job, frame)) for frame in range(1, 6)}

    logs = flamenco.run_tasks([second_chunk], workers=1, log_folder=tmp_path / "logs-again")
    notes = logs[second_chunk["name"]]["notes"]
    assert notes == [[6, "feedback", 5]]  # only the unfinished frame, from frame 5's painting on disk
    assert all(os.path.getmtime(frame_file(job, frame)) == mtime for frame, mtime in finished.items())
    for frame in range(1, 7):  # as if painted in one go (the sidecars keep paintings in float16)
        difference = np.abs(read_png(frame_file(job, frame)) - reference[frame - 1])
        assert difference.max() <= 3 / 255 and difference.mean() < 0.5 / 255, (frame, difference.max())


def _alive(pid) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def test_a_node_that_cannot_paint_fails_its_task_at_once_with_the_reason(silk, tmp_path, monkeypatch):
    scene = farm_scene(3)
    monkeypatch.setenv("SILK_WORKER_PYTHON", str(tmp_path / "no-python"))
    with pytest.raises(RuntimeError, match="cannot run the diffusion worker"):
        bpy.ops.silk.farm_prepare()
    monkeypatch.undo()
    scene.render.engine = "BLENDER_WORKBENCH"
    with pytest.raises(RuntimeError, match="not Silk"):
        bpy.ops.silk.farm_prepare()
    scene.render.engine = "SILK"
    scene.render.use_overwrite = scene.render.use_placeholder = True
    scene.silk.use_loop = True
    assert bpy.ops.silk.farm_prepare(keep_loop=False) == {"FINISHED"}
    assert not scene.render.use_overwrite and not scene.render.use_placeholder and not scene.silk.use_loop
    # A render that failed leaves frames missing: the task fails (Blender itself exits with 0).
    scene.render.filepath = str(tmp_path / "out" / "######")
    with pytest.raises(RuntimeError, match=r"frames 1-3 of 1-3 were not rendered"):
        bpy.ops.silk.farm_finish(first=1, last=3)
    assert not os.path.exists(tmp_path / "out" / ".silk")


def test_the_job_type_is_saved_where_the_manager_reads_it(silk, tmp_path, monkeypatch):
    import types

    from silk.ui import preferences

    assert "flamenco_scripts_folder" in preferences.SilkPreferences.bl_rna.properties
    chosen = types.SimpleNamespace(flamenco_scripts_folder="")
    monkeypatch.setattr(preferences, "preferences", lambda: chosen)
    with pytest.raises(RuntimeError, match="scripts folder"):
        bpy.ops.silk.farm_save_job_type()
    chosen.flamenco_scripts_folder = str(tmp_path / "manager" / "scripts")
    assert bpy.ops.silk.farm_save_job_type() == {"FINISHED"}
    saved = tmp_path / "manager" / "scripts" / "silk_shots.js"
    assert saved.read_bytes() == open(farm.JOB_TYPE_FILE, "rb").read()


def test_a_node_gives_the_worker_its_gpu_and_the_shared_model_cache(silk, tmp_path, monkeypatch):
    import types

    from silk.bridge.client import WorkerUnavailable
    from silk.engine import worker_link
    from silk.ui import preferences

    prefs = types.SimpleNamespace(model_folder=str(tmp_path / "local-models"), remote_address="", remote_token="",
                                  worker_python="", device="AUTO", precision="FP16")
    monkeypatch.setattr(preferences, "preferences", lambda: prefs)
    shared_cache = os.environ["SILK_MODEL_CACHE"]
    monkeypatch.delenv("SILK_MODEL_CACHE")
    monkeypatch.delenv("SILK_WORKER_DEVICE", raising=False)
    config = worker_link.worker_config()  # an artist's machine: the preference
    assert config.env["SILK_MODEL_CACHE"] == prefs.model_folder and "CUDA_VISIBLE_DEVICES" not in config.env
    assert worker_link.device_setting() == ("auto", "fp16")

    # A farm node: its environment wins, and SILK_WORKER_DEVICE picks the GPU.
    monkeypatch.setenv("SILK_MODEL_CACHE", shared_cache)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "shared-hf"))
    monkeypatch.setenv("SILK_WORKER_DEVICE", "cuda:3")
    config = worker_link.worker_config()
    assert "SILK_MODEL_CACHE" not in config.env and config.env["CUDA_VISIBLE_DEVICES"] == "3"
    assert worker_link.device_setting() == ("cuda", "fp16")
    worker_link.unregister()  # a fresh worker with this environment
    try:
        worker = worker_link.client()
        worker.ensure_started()  # the handshake only: no model, no GPU needed
        with open(f"/proc/{worker.process.pid}/environ", "rb") as handle:
            environment = dict(item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item)
    finally:
        worker_link.unregister()
    assert environment[b"CUDA_VISIBLE_DEVICES"] == b"3"
    assert environment[b"SILK_MODEL_CACHE"] == shared_cache.encode()
    assert environment[b"HF_HOME"] == str(tmp_path / "shared-hf").encode()

    monkeypatch.setenv("SILK_WORKER_DEVICE", "gpu2")
    with pytest.raises(WorkerUnavailable, match="SILK_WORKER_DEVICE='gpu2'"):
        worker_link.worker_config()
    assert worker_link.device_setting() == ("auto", "fp16")  # reported by worker_config, never a traceback
