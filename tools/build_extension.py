"""Build and validate the extension zips with Blender's own tooling.

    .venv/bin/python tools/build_extension.py [--output-dir dist]

Downloads the wheels the manifest lists (numba and llvmlite for each platform) into
``wheels/`` if they are missing, then builds one zip per platform,
``silk-<version>-<platform>.zip`` (``linux_x64``, ``windows_x64``, ``macos_arm64``,
``macos_x64``: Blender's tooling writes the platform with an underscore), so each user
downloads only their own wheels. Development files (tests, tools, docs, pytest.ini, the
Makefile) stay out of the zips (``[build] paths_exclude_pattern`` in the manifest); the
``mini`` model's weights go in when they are in models/mini (6.4 MB), so it works offline.
``blender_ext.py`` ships inside the ``bpy`` wheel; it runs with plain Python.
"""
import argparse
import glob
import os
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blender_ext_script() -> str:
    import importlib.util

    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("Blender's Python module (bpy) is not installed in this Python; run `make venv`")
    base = list(spec.submodule_search_locations)[0]
    found = glob.glob(os.path.join(base, "*", "scripts", "addons_core", "bl_pkg", "cli", "blender_ext.py"))
    if not found:
        raise SystemExit(f"blender_ext.py not found inside {base}")
    return found[0]


# Wheel file tag -> pip download --platform value.
_PIP_PLATFORMS = {
    "manylinux": "manylinux2014_x86_64",
    "win_amd64": "win_amd64",
    "macosx_11_0_arm64": "macosx_11_0_arm64",
    "macosx_10_14_x86_64": "macosx_10_15_x86_64",
}


def fetch_wheels(manifest: dict) -> None:
    """Download every wheel the manifest lists that is not in wheels/ yet (from PyPI)."""
    folder = os.path.join(ROOT, "wheels")
    os.makedirs(folder, exist_ok=True)
    for relative in manifest.get("wheels", []):
        path = os.path.normpath(os.path.join(ROOT, relative))
        if os.path.exists(path):
            continue
        name = os.path.basename(path)
        project, version = name.split("-")[:2]
        platform = next(pip for tag, pip in _PIP_PLATFORMS.items() if tag in name)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--platform", platform, "--python-version", "3.11", "--implementation", "cp",
             f"{project}=={version}", "--dest", folder],
            check=True,
        )
        if not os.path.exists(path):
            raise SystemExit(f"pip did not produce {name}; update the manifest's wheel list")


def build(output_dir: str) -> list:
    """Build and validate the per-platform zips; returns their paths."""
    with open(os.path.join(ROOT, "blender_manifest.toml"), "rb") as handle:
        manifest = tomllib.load(handle)
    fetch_wheels(manifest)
    os.makedirs(output_dir, exist_ok=True)
    prefix = f"{manifest['id']}-{manifest['version']}"
    for old in glob.glob(os.path.join(output_dir, prefix + "*.zip")):
        os.remove(old)
    script = blender_ext_script()
    subprocess.run([sys.executable, script, "build", "--split-platforms", "--source-dir", ROOT,
                    "--output-dir", output_dir], check=True)
    archives = sorted(glob.glob(os.path.join(output_dir, prefix + "-*.zip")))
    if len(archives) != len(manifest.get("platforms", [])):
        raise SystemExit(f"expected one zip per platform, found {archives}")
    for archive in archives:
        subprocess.run([sys.executable, script, "validate", archive], check=True)
    return archives


def archive_for_this_machine(archives: list) -> str:
    import platform

    machine = {"x86_64": "x64", "AMD64": "x64", "arm64": "arm64", "aarch64": "arm64"}[platform.machine()]
    system = {"linux": "linux", "darwin": "macos", "win32": "windows"}[sys.platform]
    return next(path for path in archives if path.endswith(f"-{system}_{machine}.zip"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "dist"))
    for archive in build(parser.parse_args().output_dir):
        print(archive)


if __name__ == "__main__":
    main()
