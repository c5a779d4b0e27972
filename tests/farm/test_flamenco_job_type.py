"""The Silk Shots job type (farm/flamenco/silk_shots.js) run under Node.js against a harness
implementing Flamenco's documented job-compiler interface (tests/farm/flamenco_harness.js):
the tasks, commands and dependencies it authors for several shot lists."""
import json
import subprocess

import pytest

from silk.engine import farm
from tests.farm import flamenco

OUTPUT = "/render/silk/job/{timestamp}/######"


def settings_for(shots, **overrides):
    settings = {"shots": farm.shots_json(shots), "render_output_path": OUTPUT, "scene": "Scene",
                "blendfile": "/render/jobs/shot.flamenco.blend", "fps": 24.0, "format": "PNG",
                "image_file_extension": ".png", "has_previews": False, "make_video": True, "max_frames_per_task": 0}
    settings.update(overrides)
    return settings


def compiled(shots, **overrides):
    job = flamenco.compile_job(settings_for(shots, **overrides))
    assert job["error"] is None, job["error"]
    return job


def blender_args(task):
    (command,) = task["commands"]
    assert command["name"] == "blender-render"
    parameters = command["parameters"]
    assert parameters["exe"] == "{blender}" and parameters["exeArgs"] == "{blenderArgs}"
    assert parameters["blendfile"] == "/render/jobs/shot.flamenco.blend"
    return parameters["args"]


def option(args, name):
    return args[args.index(name) + 1]


def test_one_task_per_shot_each_rendering_its_range_with_silk_into_the_jobs_folder():
    job = compiled(farm.plan_shots(1, 30, [11, 21]))
    tasks = job["tasks"]
    assert [task["name"] for task in tasks] == ["shot 1-10", "shot 11-20", "shot 21-30", "video"]
    output = "/render/silk/job/2026-01-02_030405/######"  # {timestamp}: the job's creation time
    assert job["settings"]["render_output_path"] == output
    for task, (start, end) in zip(tasks, [(1, 10), (11, 20), (21, 30)]):
        args = blender_args(task)
        assert task["type"] == "blender" and task["dependencies"] == []  # shots run side by side
        assert option(args, "-E") == "SILK" and option(args, "-S") == "Scene"
        assert option(args, "--render-output") == output and option(args, "--render-format") == "PNG"
        assert (option(args, "-s"), option(args, "-e")) == (str(start), str(end))
        # Blender reads its arguments in order: output, format and range before rendering.
        assert args.index("-E") < args.index("-s") < args.index("-e") < args.index("-a")
        assert args.index("--render-output") < args.index("-a") and args.index("--render-format") < args.index("-a")
        prepare, finish = [args[index + 1] for index, arg in enumerate(args) if arg == "--python-expr"]
        assert args.index("--python-exit-code") < args.index("--python-expr") < args.index("-a")
        assert prepare == "import bpy; bpy.ops.silk.farm_prepare(keep_loop=True)"
        assert finish == f"import bpy; bpy.ops.silk.farm_finish(first={start}, last={end})"
        assert args[-2:] == ["--python-expr", finish]  # checked after the render
        for expression in (prepare, finish):
            compile(expression, "<python-expr>", "exec")
    video = tasks[-1]
    assert video["type"] == "ffmpeg" and video["dependencies"] == ["shot 1-10", "shot 11-20", "shot 21-30"]
    (command,) = video["commands"]
    assert command["name"] == "frames-to-video"
    assert command["parameters"]["inputGlob"] == "/render/silk/job/2026-01-02_030405/*.png"
    assert command["parameters"]["outputFile"] == "/render/silk/job/2026-01-02_030405/shot-1-30.mp4"
    assert command["parameters"]["fps"] == 24.0


def test_chunks_of_a_long_shot_are_chained_and_each_starts_at_its_shots_first_frame():
    job = compiled(farm.plan_shots(1, 25, [21], cadence=2, loop_frames=3, max_frames=8))
    names = [task["name"] for task in job["tasks"]]
    assert names == ["shot 1-20 part 1/3 (1-7)", "shot 1-20 part 2/3 (8-15)", "shot 1-20 part 3/3 (16-20)",
                     "shot 21-25", "video"]
    first, second, third, other, video = job["tasks"]
    assert first["dependencies"] == [] and second["dependencies"] == [first["name"]]
    assert third["dependencies"] == [second["name"]] and other["dependencies"] == []
    assert video["dependencies"] == names[:4]
    for task, last in ((first, 7), (second, 15), (third, 20)):
        args = blender_args(task)
        # Blender skips the frames earlier chunks finished; Silk sees the shot from its start.
        assert (option(args, "-s"), option(args, "-e")) == ("1", str(last))
    finishes = [blender_args(task)[-1] for task in (first, second, third)]
    assert finishes == [f"import bpy; bpy.ops.silk.farm_finish(first={a}, last={b})"
                        for a, b in ((1, 7), (8, 15), (16, 20))]
    # Only the shot's last chunk repaints the loop's first frames.
    loops = [option(blender_args(task), "--python-expr") for task in (first, second, third, other)]
    assert [expression.endswith("keep_loop=True)") for expression in loops] == [False, False, True, True]


def test_without_feedback_chunks_are_independent():
    job = compiled(farm.plan_shots(1, 9, [], use_feedback=False, max_frames=4))
    render = [task for task in job["tasks"] if task["type"] == "blender"]
    assert [task["dependencies"] for task in render] == [[], [], []]
    assert [(option(blender_args(task), "-s"), option(blender_args(task), "-e")) for task in render] == [
        ("1", "4"), ("5", "8"), ("9", "9")]


@pytest.mark.parametrize("overrides, video", [
    ({}, True), ({"make_video": False}, False),
    ({"format": "OPEN_EXR_MULTILAYER", "image_file_extension": ".exr"}, False),
    ({"format": "OPEN_EXR", "image_file_extension": ".exr", "has_previews": True}, True),
    ({"fps": 0}, False)])
def test_the_video_task_comes_last_when_ffmpeg_can_read_the_frames(overrides, video):
    job = compiled(farm.plan_shots(1, 4, []), **overrides)
    assert [task["type"] for task in job["tasks"]] == ["blender"] + (["ffmpeg"] if video else [])
    if video and overrides.get("has_previews"):
        assert job["tasks"][-1]["commands"][0]["parameters"]["inputGlob"].endswith("/*.jpg")


@pytest.mark.parametrize("shots, message", [
    ("not json", "not Silk's shot list"),
    (json.dumps({"silk_shots": 1, "shots": []}), "holds no shots"),
    (json.dumps({"shots": [{"start": 1, "end": 2, "chunks": [[1, 2]]}]}), "holds no shots"),
    (json.dumps({"silk_shots": 1, "shots": [{"start": 1, "end": 4, "chunks": [[1, 2], [4, 4]]}]}), "in order"),
    (json.dumps({"silk_shots": 1, "shots": [{"start": 1, "end": 4, "chunks": [[1, 2]]}]}), "stop at 2"),
    (json.dumps({"silk_shots": 1, "shots": [{"start": 1, "end": 2, "chunks": [[1, 2]]},
                                            {"start": 4, "end": 5, "chunks": [[4, 5]]}]}), "follow each other"),
    (json.dumps({"silk_shots": 1, "shots": [{"start": "1; rm -rf /", "end": 2, "chunks": [[1, 2]]}]}), "Bad shot"),
])
def test_a_broken_shot_list_is_refused_with_the_reason(shots, message):
    job = flamenco.compile_job({**settings_for(farm.plan_shots(1, 2, [])), "shots": shots})
    assert job["error"] is not None and message in job["error"], job["error"]
    assert job["tasks"] == []


def test_video_output_formats_are_refused():
    job = flamenco.compile_job(settings_for(farm.plan_shots(1, 2, []), format="FFMPEG"))
    assert "image sequences" in job["error"]


def test_the_job_types_settings_are_what_flamencos_add_on_understands():
    settings = {setting["key"]: setting for setting in flamenco.job_type()["settings"]}
    assert settings["shots"]["eval"] == "bpy.types.SILK_OT_farm_shots.as_json(C.scene, settings.max_frames_per_task)"
    assert settings["shots"]["visible"] == "hidden"  # evaluated at submission, after the artist's choices
    assert settings["max_frames_per_task"]["visible"] == "submission"
    for setting in settings.values():
        if "eval" in setting:
            compile(setting["eval"], setting["key"], "eval")  # the add-on eval()s these as Python
    assert {"blendfile", "render_output_path", "format", "fps"} <= set(settings)


def test_the_harness_chunks_frames_as_flamenco_documents():
    script = ("const h = require(process.argv[1]); console.log(JSON.stringify(["
              "h.frameChunker('1-10,20..25,40', 4), h.frameChunker('1..8', 4), h.frameChunker('3', 2)]));")
    result = subprocess.run([flamenco.node(), "-e", script, str(flamenco.HARNESS)], capture_output=True, text=True,
                            timeout=60)
    assert json.loads(result.stdout) == [["1-4", "5-8", "9,10,20,21", "22-25", "40"], ["1-4", "5-8"], ["3"]]
