"""Which Python runs the worker, and installing one. No ``bpy`` here.

Order: the SILK_WORKER_PYTHON environment variable, then the add-on preference, then
the extension's own environment (made by "Install worker environment"). Whatever is
missing gets a message naming the fix.

The installer makes a virtual environment with the worker's libraries and the torch
build that fits the machine: CUDA wheels where an NVIDIA GPU is present (Linux and
Windows), the regular wheels on macOS (Apple MPS), CPU wheels otherwise. It writes a
log, reports progress, can be cancelled and is safe to run again (pip skips what is
already there).
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

ENV_VAR = "SILK_WORKER_PYTHON"
REQUIREMENTS_VAR = "SILK_WORKER_REQUIREMENTS"  # a requirements file to install instead of the defaults
WORKER_PACKAGES = ["diffusers>=0.30", "transformers>=4.44", "safetensors", "controlnet-aux", "opencv-python-headless",
                   "pillow", "numpy", "huggingface_hub", "accelerate", "peft>=0.17"]
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


class WorkerPythonMissing(Exception):
    pass


@dataclass
class WorkerPython:
    path: str
    source: str  # where it came from, for the UI


def environment_python(env_dir: str) -> str:
    if os.name == "nt":
        return os.path.join(env_dir, "Scripts", "python.exe")
    return os.path.join(env_dir, "bin", "python")


def resolve_worker_python(preference: str = "", env_dir: str | None = None) -> WorkerPython:
    candidates = []
    if os.environ.get(ENV_VAR):
        candidates.append((os.environ[ENV_VAR], f"the {ENV_VAR} environment variable"))
    if preference:
        candidates.append((preference, "Silk's preferences"))
    if env_dir:
        candidates.append((environment_python(env_dir), "the worker environment"))
    for path, source in candidates:
        path = os.path.abspath(os.path.expanduser(path))
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return WorkerPython(path, source)
        if source != "the worker environment":  # an explicit choice that does not work is an error
            raise WorkerPythonMissing(f"The worker Python from {source} ('{path}') does not exist or cannot run. "
                                      f"Fix that setting, or clear it to use the worker environment")
    raise WorkerPythonMissing(
        "No Python for the Silk worker yet. Click 'Install worker environment' in Silk's preferences "
        f"(Edit > Preferences > Add-ons > Silk), choose a Python that has torch and diffusers there, or set {ENV_VAR}")


def has_nvidia_gpu() -> bool:
    tool = shutil.which("nvidia-smi")
    if not tool:
        return False
    try:
        return subprocess.run([tool, "-L"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def torch_index(system: str, nvidia: bool) -> str | None:
    """The pip index for the right torch build (None: the default index)."""
    if system == "Darwin":
        return None  # macOS wheels include Apple MPS support
    return TORCH_CUDA_INDEX if nvidia else TORCH_CPU_INDEX


@dataclass
class Step:
    label: str
    command: list


def install_plan(env_dir: str, base_python: str, system: str | None = None, nvidia: bool | None = None,
                 requirements: str | None = None) -> list[Step]:
    system = system or platform.system()
    python = environment_python(env_dir)
    steps = []
    if not os.path.exists(python):
        steps.append(Step("Creating the virtual environment", [base_python, "-m", "venv", env_dir]))
    steps.append(Step("Updating pip", [python, "-m", "pip", "install", "--upgrade", "pip"]))
    requirements = requirements or os.environ.get(REQUIREMENTS_VAR)
    if requirements:
        steps.append(Step("Installing the worker's libraries", [python, "-m", "pip", "install", "-r", requirements]))
        return steps
    nvidia = has_nvidia_gpu() if nvidia is None else nvidia
    index = torch_index(system, nvidia)
    torch_command = [python, "-m", "pip", "install", "torch"]
    if index:
        torch_command += ["--index-url", index]
    build = "CUDA" if (nvidia and system != "Darwin") else ("Apple" if system == "Darwin" else "CPU")
    steps.append(Step(f"Installing torch ({build} build)", torch_command))
    steps.append(Step("Installing diffusers and the other libraries",
                      [python, "-m", "pip", "install", *WORKER_PACKAGES]))
    return steps


@dataclass
class InstallProgress:
    step: int = 0
    steps: int = 0
    label: str = ""
    done: bool = False
    error: str | None = None
    log_path: str = ""
    started: float = field(default_factory=time.time)


class Installer:
    """Runs an install plan on a thread; poll ``progress``; ``cancel()`` stops it."""

    def __init__(self, plan: list[Step], log_path: str, step_timeout: float = 3600.0):
        self.plan = plan
        self.progress = InstallProgress(steps=len(plan), log_path=log_path)
        self.step_timeout = step_timeout
        self._cancel = threading.Event()
        self._process = None
        self.thread = threading.Thread(target=self._run, name="silk-install", daemon=True)

    def start(self) -> "Installer":
        self.thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()

    def wait(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def _run(self) -> None:
        os.makedirs(os.path.dirname(self.progress.log_path), exist_ok=True)
        env = dict(os.environ)
        env.pop("PYTHONHOME", None)  # Blender's; the environment's Python has its own
        env.pop("PYTHONPATH", None)
        with open(self.progress.log_path, "a", encoding="utf-8") as log:
            log.write(f"\n=== Silk worker environment install {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
            for index, step in enumerate(self.plan, start=1):
                if self._cancel.is_set():
                    self.progress.error = "Cancelled"
                    break
                self.progress.step, self.progress.label = index, step.label
                log.write(f"\n--- {index}/{len(self.plan)} {step.label}: {' '.join(step.command)}\n")
                log.flush()
                try:
                    self._process = subprocess.Popen(step.command, stdout=log, stderr=subprocess.STDOUT,
                                                     stdin=subprocess.DEVNULL, env=env)
                    code = self._process.wait(timeout=self.step_timeout)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self.progress.error = f"'{step.label}' took longer than {self.step_timeout:.0f} s"
                    break
                except OSError as error:
                    self.progress.error = f"'{step.label}' could not run: {error.strerror}"
                    break
                if code != 0:
                    self.progress.error = ("Cancelled" if self._cancel.is_set() else
                                           f"'{step.label}' failed (exit code {code}); see the log: "
                                           f"{self.progress.log_path}")
                    break
            log.write(f"\n=== {'failed: ' + self.progress.error if self.progress.error else 'done'} ===\n")
        self.progress.done = True
