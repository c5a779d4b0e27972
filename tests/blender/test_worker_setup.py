"""Worker setup inside Blender: preferences, the install operator, logs."""
import os

import bpy
import pytest

from silk.bridge import environment


def test_preferences_register_with_worker_settings(silk):
    from silk.ui import preferences

    assert preferences.SilkPreferences.is_registered
    props = preferences.SilkPreferences.bl_rna.properties
    assert {"worker_python", "remote_address", "remote_token", "device", "precision"} <= set(props.keys())
    assert preferences.worker_environment_dir()  # a folder of Silk's own exists


@pytest.fixture
def install_into(silk, tmp_path, monkeypatch):
    """Point the install operator at a temporary folder and a requirements file of our choice."""
    from silk.ui import preferences

    def configure(requirement: str):
        requirements = tmp_path / "requirements.txt"
        requirements.write_text(requirement + "\n")
        monkeypatch.setenv(environment.REQUIREMENTS_VAR, str(requirements))
        monkeypatch.setattr(preferences, "worker_environment_dir", lambda: str(tmp_path / "env"))
        monkeypatch.setattr(preferences, "install_log_path", lambda: str(tmp_path / "install.log"))

    return configure


def test_install_worker_environment_operator_installs_and_reruns(install_into, tmp_path, monkeypatch):
    from silk.operators import worker

    monkeypatch.delenv(environment.ENV_VAR, raising=False)  # the tests' own worker Python would win

    install_into("six==1.16.0")
    for _ in range(2):  # safe to run again
        assert bpy.ops.silk.install_worker_environment() == {"FINISHED"}
        assert worker.install_state() == "Worker environment installed"
    python = environment.environment_python(str(tmp_path / "env"))
    assert os.path.exists(python)
    assert environment.resolve_worker_python("", str(tmp_path / "env")).path == os.path.abspath(python)


def test_failed_install_is_reported_in_blender(install_into):
    install_into("this-package-does-not-exist-silk-test==99")
    with pytest.raises(RuntimeError, match="Install failed.*install.log"):
        bpy.ops.silk.install_worker_environment()


def test_open_log_without_a_log_warns(silk, monkeypatch, tmp_path):
    from silk.ui import preferences

    monkeypatch.setattr(preferences, "worker_log_path", lambda: str(tmp_path / "none.log"))
    assert bpy.ops.silk.open_log(which="WORKER") == {"CANCELLED"}
