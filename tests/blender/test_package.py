"""The built extension zip installs into a clean Blender user folder, enables and renders."""
import json
import os
import subprocess
import sys
import zipfile

from tools.blender_env import ROOT
from tools.build_extension import build


def test_built_zip_installs_enables_and_renders(tmp_path):
    archive = build(str(tmp_path / "dist"))
    names = zipfile.ZipFile(archive).namelist()
    assert "blender_manifest.toml" in names and "engine/guides/raster.py" in names
    assert not any(name.startswith(("tests/", "docs/", "tools/", ".")) for name in names)

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
    assert output.exists() and output.stat().st_size > 0
