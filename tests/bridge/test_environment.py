"""Choosing the worker's Python, and installing a worker environment."""
import os
import subprocess
import sys

import pytest

from silk.bridge import environment
from silk.bridge.environment import Installer, WorkerPythonMissing, install_plan, resolve_worker_python


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


@pytest.mark.parametrize("system, nvidia, index", [
    ("Linux", True, environment.TORCH_CUDA_INDEX),
    ("Windows", True, environment.TORCH_CUDA_INDEX),
    ("Linux", False, environment.TORCH_CPU_INDEX),
    ("Darwin", False, None),
])
def test_the_torch_build_fits_the_machine(tmp_path, system, nvidia, index):
    plan = install_plan(str(tmp_path / "env"), sys.executable, system=system, nvidia=nvidia)
    torch_step = next(step for step in plan if step.label.startswith("Installing torch"))
    assert ("--index-url" in torch_step.command) == (index is not None)
    if index:
        assert torch_step.command[torch_step.command.index("--index-url") + 1] == index
    libraries = next(step for step in plan if "diffusers" in step.label)
    assert any(package.startswith("diffusers") for package in libraries.command)
    assert "controlnet-aux" in libraries.command


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
