"""Choosing the worker's Python, and installing a worker environment."""
import os
import subprocess
import sys

import pytest

from silk.bridge import environment
from silk.bridge.environment import Installer, WorkerPythonMissing, install_plan, resolve_worker_python
from tools.blender_env import ROOT


def test_resolution_order_env_var_then_preference_then_environment(tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    env_python = environment.environment_python(str(env_dir))
    os.makedirs(os.path.dirname(env_python))
    os.symlink(sys.executable, env_python)
    monkeypatch.delenv(environment.ENV_VAR, raising=False)
    assert resolve_worker_python("", str(env_dir)).source == "the worker environment"
    assert resolve_worker_python(sys.executable, str(env_dir)).source == "Silk's preferences"
    monkeypatch.setenv(environment.ENV_VAR, sys.executable)
    assert resolve_worker_python(sys.executable, str(env_dir)).source.startswith("the SILK_WORKER_PYTHON")


def test_missing_python_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv(environment.ENV_VAR, raising=False)
    with pytest.raises(WorkerPythonMissing, match="Install worker environment"):
        resolve_worker_python("", str(tmp_path / "none"))
    with pytest.raises(WorkerPythonMissing, match="preferences"):
        resolve_worker_python(str(tmp_path / "nope"), str(tmp_path / "none"))
    monkeypatch.setenv(environment.ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(WorkerPythonMissing, match="SILK_WORKER_PYTHON"):
        resolve_worker_python("", None)


@pytest.mark.parametrize("system, machine, capability, amd, label, index", [
    ("Linux", "x86_64", (8, 9), False, "NVIDIA CUDA 12.8", "cu128"),
    ("Windows", "AMD64", (12, 0), False, "NVIDIA CUDA 12.8", "cu128"),
    ("Linux", "x86_64", (), False, "NVIDIA CUDA 12.8", "cu128"),  # a driver too old to tell: the newest build
    ("Linux", "x86_64", (6, 1), False, "NVIDIA CUDA 12.6", "cu126"),  # Pascal: the build that still has it
    ("Windows", "AMD64", (5, 2), False, "NVIDIA CUDA 12.6", "cu126"),
    ("Linux", "x86_64", (3, 5), False, "CPU", "cpu"),  # Kepler: no CUDA build left
    ("Linux", "x86_64", None, True, "AMD ROCm", "rocm"),
    ("Windows", "AMD64", None, True, "CPU", "cpu"),  # no ROCm wheels for Windows
    ("Linux", "aarch64", None, False, "CPU", "cpu"),
    ("Darwin", "arm64", None, False, "Apple silicon, MPS", None),
    ("Darwin", "x86_64", None, False, "Intel Mac, CPU", None),
])
def test_torch_and_torchvision_come_together_from_the_index_that_fits(tmp_path, system, machine, capability, amd,
                                                                        label, index):
    plan = install_plan(str(tmp_path / "env"), sys.executable, system=system, machine=machine,
                        capability=capability, amd=amd)
    torch_step = next(step for step in plan if step.label.startswith("Installing torch"))
    assert label in torch_step.label
    command = torch_step.command
    assert ("--index-url" in command) == (index is not None)
    if index:
        assert command[command.index("--index-url") + 1].startswith(environment.PYTORCH_INDEX + index)
    pins = environment.pinned_requirements()
    wanted = [p for p in pins if p.startswith(("torch==", "torchvision=="))]
    if machine == "x86_64" and system == "Darwin":
        wanted = list(environment.INTEL_MAC_TORCH)
        assert "numpy<2" in command
    assert [arg for arg in command if "==" in arg or "<" in arg] == wanted  # one step, both, pinned
    libraries = next(step for step in plan if "diffusers" in step.label)
    assert "diffusers==0.42.1" in libraries.command and "controlnet-aux==0.0.10" in libraries.command
    assert "--index-url" not in libraries.command and set(wanted) <= set(libraries.command)  # no other torch
    assert all(("==" in arg or "<" in arg) for arg in libraries.command[4:])  # every version pinned


def test_the_installer_and_the_tests_use_one_pinned_list():
    from importlib.metadata import version

    with open(os.path.join(ROOT, "requirements", "worker.txt")) as handle:
        assert "-r ../bridge/worker-requirements.txt" in handle.read()
    for pin in environment.pinned_requirements():
        name = environment.package_name(pin)
        if "==" in pin and name not in ("torchvision", "accelerate", "controlnet-aux"):
            assert version(name).split("+")[0] == pin.split("==")[1], pin  # this very environment


def test_old_gpus_are_read_from_nvidia_smi(monkeypatch):
    answers = {"-L": "GPU 0: Tesla P100", "--query-gpu=compute_cap": "6.0\n8.6\n"}
    monkeypatch.setattr(environment, "_run", lambda command: answers.get(command[1]))
    assert environment.nvidia_compute_capability() == (6, 0)  # the oldest card decides
    answers["--query-gpu=compute_cap"] = "[N/A]\n"
    assert environment.nvidia_compute_capability() == ()
    monkeypatch.setattr(environment, "_run", lambda command: None)
    assert environment.nvidia_compute_capability() is None and not environment.has_nvidia_gpu()


def test_a_failed_torch_step_says_what_is_missing(tmp_path):
    plan = install_plan(str(tmp_path / "env"), sys.executable, system="Linux", machine="x86_64", capability=(8, 0),
                        amd=False)
    torch_step = next(step for step in plan if step.label.startswith("Installing torch"))
    failing = environment.Step(torch_step.label, [sys.executable, "-c", "print('ERROR: No matching distribution "
                                                                        "found for torch==2.13.0'); exit(1)"],
                               torch_step.hint)
    installer = Installer([failing], str(tmp_path / "install.log")).start()
    assert installer.wait(60)
    assert "no torch==2.13.0 and torchvision==0.28.0 for NVIDIA CUDA 12.8 on this platform" in installer.progress.error


def test_installer_builds_a_working_environment_and_is_safe_to_rerun(tmp_path):
    """A real install from the package registry, with a small requirements file."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six==1.16.0\n")
    env_dir = str(tmp_path / "env")
    log = str(tmp_path / "install.log")
    for attempt in range(2):
        plan = install_plan(env_dir, sys.executable, requirements=str(requirements))
        installer = Installer(plan, log).start()
        assert installer.wait(600)
        assert installer.progress.done and installer.progress.error is None, open(log).read()[-2000:]
        assert installer.progress.step == installer.progress.steps == len(plan)
        if attempt == 1:
            assert not any("venv" in step.command for step in plan)  # the re-run reuses the environment
    python = environment.environment_python(env_dir)
    assert subprocess.run([python, "-c", "import six"], timeout=60).returncode == 0
    text = open(log).read()
    assert text.count("=== Silk worker environment install") == 2 and "done ===" in text


def test_failed_step_is_reported_with_the_log(tmp_path):
    plan = [environment.Step("A step that fails", [sys.executable, "-c", "import sys; print('boom'); sys.exit(4)"])]
    installer = Installer(plan, str(tmp_path / "install.log")).start()
    assert installer.wait(60)
    assert "failed (exit code 4)" in installer.progress.error and "install.log" in installer.progress.error
    assert "boom" in open(tmp_path / "install.log").read()


def test_install_can_be_cancelled(tmp_path):
    plan = [environment.Step("Sleeping", [sys.executable, "-c", "import time; time.sleep(60)"]),
            environment.Step("Never", [sys.executable, "-c", "pass"])]
    installer = Installer(plan, str(tmp_path / "install.log")).start()
    import time

    time.sleep(0.5)
    installer.cancel()
    assert installer.wait(10)
    assert installer.progress.error == "Cancelled" and installer.progress.step == 1
