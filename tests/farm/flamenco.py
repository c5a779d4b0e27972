"""Flamenco, as far as tests can have it here: the job compiler run under Node.js against the
documented interface (flamenco_harness.js), the Blender add-on's submission (its `eval`
expressions, with the same local names), and a small manager that runs the tasks in
dependency order, several at once, each Blender task in its own process (blender_cli.py).
No real Flamenco Manager or Worker is involved."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "tests" / "farm" / "flamenco_harness.js"
BLENDER_CLI = ROOT / "tests" / "farm" / "blender_cli.py"
JOB_TYPE = ROOT / "farm" / "flamenco" / "silk_shots.js"
BLENDER_ARGS = ["-b", "-y"]  # Flamenco's default {blenderArgs}


def node() -> str:
    found = shutil.which("node") or shutil.which("nodejs")
    assert found, "Node.js is needed for the job compiler tests: `make test` installs it (apt-get install nodejs)"
    return found


def compile_job(settings: dict, job_type: Path = JOB_TYPE, name: str = "silk job") -> dict:
    """What the job compiler authors for ``settings``: {jobType, settings, error, printed, tasks}."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(settings, handle)
    try:
        result = subprocess.run([node(), str(HARNESS), str(job_type), handle.name, name], capture_output=True,
                                text=True, timeout=60)
    finally:
        os.unlink(handle.name)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def job_type() -> dict:
    return compile_job({})["jobType"]


def is_visible(setting: dict) -> bool:
    return setting.get("visible", "visible") in ("visible", "submission")


def submit(context, blendfile: str, jobname: str = "silk-test", **chosen) -> dict:
    """The job settings Flamenco's Blender add-on sends for this job type: the artist's
    choices (``chosen``), other visible settings from their `eval` or default, hidden ones
    evaluated, and the blend file it submits."""
    import bpy

    settings_type = job_type()["settings"]

    class PropertyGroup:  # the add-on's per-job-type property group: every setting, visible values
        pass

    group = PropertyGroup()
    for setting in settings_type:
        setattr(group, setting["key"], chosen.get(setting["key"], setting.get("default")))

    def abspath(path):
        return Path(os.path.abspath(bpy.path.abspath(str(path))))

    def last_n_dir_parts(count, filepath=None):
        parent = Path(os.path.abspath(filepath or bpy.data.filepath)).parent
        return Path(*parent.parts[-count:]) if count > 0 else Path()

    local_names = {"bpy": bpy, "C": context, "jobname": jobname, "Path": Path, "abspath": abspath,
                   "last_n_dir_parts": last_n_dir_parts, "settings": group}
    values = {}
    for setting in settings_type:
        key = setting["key"]
        if key in chosen:
            values[key] = chosen[key]
        elif setting.get("eval"):
            values[key] = eval(setting["eval"], {}, local_names)  # as the add-on does
        elif "default" in setting:
            values[key] = setting["default"]
        if is_visible(setting) and key in values:
            setattr(group, key, values[key])
    values["blendfile"] = blendfile
    return values


def command_line(command: dict) -> list:
    """A blender-render command as the worker runs it, with this machine's Blender stand-in."""
    parameters = command["parameters"]
    assert parameters["exe"] == "{blender}" and parameters["exeArgs"] == "{blenderArgs}"
    return ([sys.executable, str(BLENDER_CLI), *BLENDER_ARGS, *parameters["argsBefore"], parameters["blendfile"],
             *parameters["args"]])


class TaskFailed(AssertionError):
    pass


def run_tasks(tasks: list, workers: int, log_folder: Path, timeout: float = 420.0, env=None) -> dict:
    """Run the job's Blender tasks as a manager would: a task starts once its dependencies are
    done, at most ``workers`` at once, each in a process of its own. Returns name -> log (the
    stand-in's record of how it made each frame, plus its output). Video tasks are not run
    (no FFmpeg here); they must come last. Dependencies on tasks not in ``tasks`` count as
    done (they ran in an earlier call)."""
    blender = [task for task in tasks if task["type"] == "blender"]
    given = {task["name"] for task in tasks}
    done = {dependency for task in blender for dependency in task["dependencies"] if dependency not in given}
    running, logs = {}, {}
    done_before = len(done)
    deadline = time.monotonic() + timeout
    log_folder.mkdir(parents=True, exist_ok=True)
    while len(done) - done_before < len(blender):
        for task in blender:
            name = task["name"]
            if name in done or name in running or len(running) >= workers:
                continue
            if all(dependency in done for dependency in task["dependencies"]):
                log = log_folder / f"task-{len(logs) + len(running)}.json"
                output = open(log.with_suffix(".out"), "w")
                process = subprocess.Popen(command_line(task["commands"][0]), stdout=output, stderr=subprocess.STDOUT,
                                           env={**os.environ, **(env or {}), "SILK_TEST_FARM_LOG": str(log)})
                running[name] = (process, log, output)
        if not running:
            raise TaskFailed(f"no task can start: {sorted(given - done)} wait for tasks that never run")
        for name, (process, log, output) in list(running.items()):
            if process.poll() is None:
                continue
            output.close()
            text = log.with_suffix(".out").read_text()
            if process.returncode != 0:
                for other, _log, _output in running.values():
                    other.kill()
                raise TaskFailed(f"task {name!r} failed ({process.returncode}):\n{text[-4000:]}")
            logs[name] = {**json.loads(log.read_text()), "output": text}
            done.add(name)
            del running[name]
        if time.monotonic() > deadline:
            for process, _log, _output in running.values():
                process.kill()
            raise TaskFailed(f"tasks still running after {timeout} s: {sorted(running)}")
        time.sleep(0.05)
    return logs
