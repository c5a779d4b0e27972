"""tools/gpu_check.py's parts that run without a GPU: its device check and its table."""
import subprocess
import sys

import pytest
import torch

from tools import gpu_check
from tools.blender_env import ROOT


def test_without_cuda_the_check_stops_at_once_and_says_why():
    if torch.cuda.is_available():  # a GPU machine: the check names the card (and make gpu-check runs)
        assert gpu_check.require_cuda(torch) == torch.cuda.get_device_name(0)
        return
    with pytest.raises(gpu_check.GpuCheckError, match="needs an NVIDIA GPU with CUDA.*torch "):
        gpu_check.require_cuda(torch)
    done = subprocess.run([sys.executable, "tools/gpu_check.py"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "gpu-check: make gpu-check needs an NVIDIA GPU" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_table_lists_every_row_with_units():
    rows = [{"check": "fp16", "precision": "fp16", "size": "512x512", "s/frame": 1.23456, "peak VRAM": 3 * 2 ** 30,
             "result": "ok"},
            {"check": "out of memory + recovery", "precision": "fp16", "size": "2048x2048",
             "result": "reported (out_of_memory); then painted 512x512"}]
    table = gpu_check.format_table(rows).splitlines()
    assert table[0].split() == ["check", "precision", "size", "s/frame", "peak", "VRAM", "result"]
    assert table[2].split() == ["fp16", "fp16", "512x512", "1.235", "3.00", "GiB", "ok"]
    assert table[3].startswith("out of memory + recovery") and " - " in table[3] and table[3].endswith("512x512")
