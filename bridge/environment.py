"""Which Python runs the worker, and installing one. No ``bpy`` here.

Order: the SILK_WORKER_PYTHON environment variable, then the add-on preference, then
the extension's own environment (made by "Install worker environment"). Whatever is
missing gets a message naming the fix.

The installer makes a virtual environment with the worker's libraries at the versions pinned
in ``worker-requirements.txt`` (the one list the tests' environment is made from too), and
torch with torchvision in ONE pip step from the PyTorch index that fits the machine: CUDA
wheels for an NVIDIA GPU (an older CUDA build for cards the newest one no longer supports,
read from nvidia-smi's compute capability), ROCm wheels for an AMD GPU on Linux, the regular
wheels on Apple silicon (MPS), CPU wheels otherwise; Intel Macs get the last torch built for
them. It writes a log, reports progress, can be cancelled, is safe to run again (pip skips
what is already there), and says in words why a step failed.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

ENV_VAR = "SILK_WORKER_PYTHON"
REQUIREMENTS_VAR = "SILK_WORKER_REQUIREMENTS"  # a requirements file to install instead of the defaults
PINNED_REQUIREMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker-requirements.txt")
TORCH_PACKAGES = ("torch", "torchvision")  # installed together, from one index
PYTORCH_INDEX = "https://download.pytorch.org/whl/"
# CUDA builds by the oldest compute capability they support, newest first: CUDA 12.8 wheels start
# at Volta-Turing (7.5 for the newest toolkits), 12.6 wheels still carry Maxwell and Pascal kernels.
CUDA_BUILDS = (((7, 5), "cu128"), ((5, 0), "cu126"))
ROCM_BUILD = "rocm6.4"
TORCH_CUDA_INDEX = PYTORCH_INDEX + CUDA_BUILDS[0][1]
TORCH_CPU_INDEX = PYTORCH_INDEX + "cpu"
# The last torch with Intel-Mac (x86_64 macOS) wheels, its torchvision, and the numpy it was built for.
INTEL_MAC_TORCH = ("torch==2.2.2", "torchvision==0.17.2", "numpy<2")


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


def pinned_requirements(path: str = PINNED_REQUIREMENTS) -> list:
    """The pinned list: its requirement lines, then the installer-only ``#worker:`` lines."""
    plain, extra = [], []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            text = line.strip()
            if text.startswith("#worker:"):
                extra.append(text[len("#worker:"):].split("#")[0].strip())
            elif text and not text.startswith("#"):
                plain.append(text.split("#")[0].strip())
    return plain + extra


def package_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\s\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _run(command: list) -> str | None:
    tool = shutil.which(command[0])
    if not tool:
        return None
    try:
        done = subprocess.run([tool, *command[1:]], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def nvidia_compute_capability() -> tuple | None:
    """The lowest compute capability among the NVIDIA GPUs (major, minor), () for a GPU whose
    capability nvidia-smi cannot tell (an old driver), None without an NVIDIA GPU."""
    if _run(["nvidia-smi", "-L"]) is None:
        return None
    found = _run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"]) or ""
    capabilities = [tuple(int(part) for part in line.strip().split(".")) for line in found.splitlines()
                    if re.fullmatch(r"\d+\.\d+", line.strip())]
    return min(capabilities) if capabilities else ()


def has_nvidia_gpu() -> bool:
    return nvidia_compute_capability() is not None


def has_amd_gpu(system: str) -> bool:
    """An AMD GPU ROCm can drive: Linux only (ROCm wheels do not exist for Windows or macOS)."""
    return system == "Linux" and (os.path.exists("/dev/kfd") or _run(["rocminfo"]) is not None)


@dataclass
class TorchBuild:
    """Which torch wheels to install, from where, and why (for the progress label and the log)."""

    label: str
    index: str | None  # None: the default index (PyPI)
    packages: tuple
    note: str = ""


def torch_build(system: str, machine: str, capability: tuple | None, amd: bool, pins: list) -> TorchBuild:
    """The torch build for this machine. ``capability``: nvidia_compute_capability()."""
    torch_pins = tuple(pin for pin in pins if package_name(pin) in TORCH_PACKAGES)
    if system == "Darwin":
        if machine in ("x86_64", "i386"):
            return TorchBuild("Intel Mac, CPU", None, INTEL_MAC_TORCH,
                              "torch stopped making Intel-Mac wheels after 2.2.2: the worker runs on the CPU with it")
        return TorchBuild("Apple silicon, MPS", None, torch_pins)
    if capability is not None:
        for oldest, build in CUDA_BUILDS:
            if not capability or capability >= oldest:
                note = "" if build == CUDA_BUILDS[0][1] else (
                    f"compute capability {'.'.join(map(str, capability))} is older than the newest CUDA build "
                    f"supports: using {build}")
                return TorchBuild(f"NVIDIA CUDA {build[2:4]}.{build[4:]}", PYTORCH_INDEX + build, torch_pins, note)
        return TorchBuild("CPU", TORCH_CPU_INDEX, torch_pins,
                          f"this NVIDIA GPU (compute capability {'.'.join(map(str, capability))}) is older than any "
                          "CUDA build of torch supports: the worker runs on the CPU")
    if amd and system == "Linux":
        return TorchBuild(f"AMD ROCm {ROCM_BUILD[4:]}", PYTORCH_INDEX + ROCM_BUILD, torch_pins)
    note = "torch has ROCm builds for Linux only: on this system the worker runs on the CPU" if amd else ""
    return TorchBuild("CPU", TORCH_CPU_INDEX, torch_pins, note)


def torch_index(system: str, nvidia: bool) -> str | None:
    """The pip index for the right torch build (None: the default index)."""
    return torch_build(system, "arm64", () if nvidia else None, False, []).index


@dataclass
class Step:
    label: str
    command: list
    hint: str = ""  # what a failure of this step most likely means, for the message


def install_plan(env_dir: str, base_python: str, system: str | None = None, nvidia: bool | None = None,
                 requirements: str | None = None, machine: str | None = None, capability=False,
                 amd: bool | None = None) -> list[Step]:
    """The steps: the environment, pip, torch+torchvision in one step, then the other pinned libraries.
    ``nvidia`` (a GPU of unknown capability) or ``capability`` override what nvidia-smi says."""
    system, machine = system or platform.system(), machine or platform.machine()
    python = environment_python(env_dir)
    steps = []
    if not os.path.exists(python):
        steps.append(Step("Creating the virtual environment", [base_python, "-m", "venv", env_dir],
                          "Blender's Python could not make a virtual environment here"))
    steps.append(Step("Updating pip", [python, "-m", "pip", "install", "--upgrade", "pip"],
                      "pip could not reach the package registry (no internet, or a proxy)"))
    requirements = requirements or os.environ.get(REQUIREMENTS_VAR)
    if requirements:
        steps.append(Step("Installing the worker's libraries", [python, "-m", "pip", "install", "-r", requirements]))
        return steps
    if capability is False:
        capability = nvidia_compute_capability() if nvidia is None else (() if nvidia else None)
    amd = has_amd_gpu(system) if amd is None else amd
    pins = pinned_requirements()
    build = torch_build(system, machine, capability, amd, pins)
    command = [python, "-m", "pip", "install", *build.packages] + (["--index-url", build.index] if build.index else [])
    steps.append(Step(f"Installing torch and torchvision ({build.label})", command,
                      f"no {' and '.join(build.packages)} for {build.label} on this platform and Python "
                      f"{sys.version_info.major}.{sys.version_info.minor}" + (f" ({build.note})" if build.note else "")))
    # The torch pins again (already satisfied: a no-op) so that no other library's needs can swap the build.
    chosen = {package_name(pin) for pin in build.packages}
    others = [pin for pin in pins if package_name(pin) not in chosen and package_name(pin) not in TORCH_PACKAGES]
    others += list(build.packages)
    steps.append(Step("Installing diffusers and the other libraries", [python, "-m", "pip", "install", *others],
                      "a pinned library has no build for this platform and Python"))
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
                                           f"'{step.label}' failed (exit code {code})"
                                           + explain_failure(step, self.progress.log_path)
                                           + f"; see the log: {self.progress.log_path}")
                    break
            log.write(f"\n=== {'failed: ' + self.progress.error if self.progress.error else 'done'} ===\n")
        self.progress.done = True


# What pip says -> what it means for the user.
PIP_FAILURES = (
    ("No matching distribution found", "{hint}"),
    ("Could not find a version that satisfies", "{hint}"),
    ("Failed to establish a new connection", "the package registry could not be reached (no internet, or a proxy)"),
    ("Temporary failure in name resolution", "the package registry could not be reached (no internet)"),
    ("No space left on device", "the disk is full (torch alone needs a few GB)"),
    ("Permission denied", "no permission to write the environment's folder"),
)


def explain_failure(step: Step, log_path: str) -> str:
    """': <why>' from the end of the log, or from the step's hint; '' when nothing is known."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 20000))
            tail = handle.read()
    except OSError:
        tail = ""
    for pattern, meaning in PIP_FAILURES:
        if pattern in tail:
            return ": " + meaning.format(hint=step.hint or "a package has no build for this platform")
    return f": {step.hint}" if step.hint else ""
