"""Build and validate the extension zip with Blender's own tooling.

    .venv/bin/python tools/build_extension.py [--output-dir dist]

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


def build(output_dir: str) -> str:
    with open(os.path.join(ROOT, "blender_manifest.toml"), "rb") as handle:
        manifest = tomllib.load(handle)
    os.makedirs(output_dir, exist_ok=True)
    archive = os.path.join(output_dir, f"{manifest['id']}-{manifest['version']}.zip")
    if os.path.exists(archive):
        os.remove(archive)
    script = blender_ext_script()
    subprocess.run([sys.executable, script, "build", "--source-dir", ROOT, "--output-dir", output_dir], check=True)
    subprocess.run([sys.executable, script, "validate", archive], check=True)
    return archive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "dist"))
    print(build(parser.parse_args().output_dir))


if __name__ == "__main__":
    main()
