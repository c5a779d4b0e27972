"""docs/python-api.md's complete script runs exactly as written: in a fresh Blender Python with an
empty user folder it installs and enables the built extension, sets Standard, and renders an
animation with the real worker (tiny)."""
import os
import re
import subprocess
import sys

import numpy as np

from tests.support.scenes import read_png
from tools.blender_env import ROOT
from tools.build_extension import archive_for_this_machine, build


def doc_script() -> str:
    with open(os.path.join(ROOT, "docs", "python-api.md"), encoding="utf-8") as file:
        text = file.read()
    section = text.split("## Render a frame or an animation headless", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_documented_script_installs_silk_and_renders_an_animation_in_standard_view(tmp_path):
    script = tmp_path / "render.py"
    script.write_text(doc_script())
    archive = archive_for_this_machine(build(str(tmp_path / "dist")))
    user = tmp_path / "user"
    user.mkdir()
    output = tmp_path / "frames" / "f_"
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(user))
    result = subprocess.run([sys.executable, str(script), archive, str(output)], env=env, capture_output=True,
                            text=True, timeout=540)
    log = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, log
    frames = sorted(name for name in os.listdir(tmp_path / "frames") if name.endswith(".png"))
    assert frames == ["f_0001.png", "f_0002.png", "f_0003.png"], log
    pictures = [read_png(str(tmp_path / "frames" / name)) for name in frames]
    assert pictures[0].shape[:2] == (128, 128)
    assert all(picture.std() > 0.01 for picture in pictures)  # painted, not black
    assert "view transform" not in log  # Standard: no colour warning
