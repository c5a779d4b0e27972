"""The built extension zip installs into a clean Blender user folder, enables and renders."""
import json
import os
import subprocess
import sys
import zipfile

from tools.blender_env import ROOT
from tools.build_extension import archive_for_this_machine, build


def test_built_zip_installs_enables_and_renders(tmp_path):
    archives = build(str(tmp_path / "dist"))
    assert {os.path.basename(a).rsplit("-", 1)[1] for a in archives} == {
        "linux_x64.zip", "windows_x64.zip", "macos_arm64.zip", "macos_x64.zip"}
    archive = archive_for_this_machine(archives)
    names = zipfile.ZipFile(archive).namelist()
    assert "blender_manifest.toml" in names and "engine/guides/raster.py" in names
    assert "farm/flamenco/silk_shots.js" in names  # the Flamenco job type ships with Silk
    assert not any(name.startswith(("tests/", "docs/", "tools/", ".")) for name in names)
    assert not {"pytest.ini", "Makefile", "README.md"} & set(names)  # development files stay out
    assert "LICENSE" in names
    wheels = [name for name in names if name.endswith(".whl")]
    assert len(wheels) == 2 and all("linux" in name for name in wheels)  # only this platform's

    user = tmp_path / "user"
    user.mkdir()
    output = tmp_path / "render.png"
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(user))
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "support", "install_and_render.py"), archive, str(output)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(result.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert "bl_ext.user_default.silk" in report["enabled"]
    assert report["module_file"].startswith(str(user))  # the installed copy, not the checkout
    assert report["engine"] == "SILK"
    assert report["bundled_numba"], "the extension's numba wheel was not installed"
    assert report["kernels"], "the installed extension did not get its compiled kernels"
    assert output.exists() and output.stat().st_size > 0
