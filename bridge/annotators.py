"""ControlNet annotators, run in the worker: a picture in, the control image a ControlNet expects out.

A ControlNet unit of a ``generate`` request may name an annotator; the worker runs it on the
unit's image (float32 height x width x channels in [0, 1]) and gives the backend the result
instead (float32 height x width x 3 in [0, 1], the same size).

- ``none`` passes the image through untouched.
- ``canny`` is OpenCV alone, no weights and no torch, exactly what controlnet-aux's
  CannyDetector computes, at the image's own resolution.
- ``hed``, ``lineart``, ``openpose``, ``midas`` are controlnet-aux's detectors, with weights from
  a local folder or a hub repo (``lllyasviel/Annotators`` by default); each is loaded once per
  worker and kept.

controlnet-aux, torch and OpenCV are imported only when an annotator needs them, so a worker
without them still serves everything else and names the fix when one is asked for.
"""
from __future__ import annotations

import logging
import math
import os
import re
import sys
import threading
from dataclasses import dataclass, field

import numpy as np

from .errors import JobError

log = logging.getLogger("silk.worker")

DEFAULT_WEIGHTS = "lllyasviel/Annotators"
INSTALL_HINT = ("Install controlnet-aux and a torchvision that matches the worker's torch{torch} into the worker's "
                "Python, e.g. with 'Install worker environment' in Silk's preferences")
_NUMBER, _BOOL = "number", "bool"


@dataclass(frozen=True)
class WeightedAnnotator:
    """A controlnet-aux detector: its class, the weight files it reads, and the options it takes."""

    detector: str
    files: tuple
    options: dict = field(default_factory=dict)  # option name -> _NUMBER or _BOOL


WEIGHTED = {
    "hed": WeightedAnnotator("HEDdetector", ("ControlNetHED.pth",), {"safe": _BOOL, "scribble": _BOOL}),
    "lineart": WeightedAnnotator("LineartDetector", ("sk_model.pth", "sk_model2.pth"), {"coarse": _BOOL}),
    "openpose": WeightedAnnotator("OpenposeDetector", ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
                                  {"include_body": _BOOL, "include_hand": _BOOL, "include_face": _BOOL}),
    # Its a and bg_th options shape only the normal map it can also make, which is not asked for here.
    "midas": WeightedAnnotator("MidasDetector", ("dpt_hybrid-midas-501f0c75.pt",)),
}
CANNY_OPTIONS = {"low_threshold": 100.0, "high_threshold": 200.0}
# The short side the weighted detectors work at (controlnet-aux's default); their output is
# scaled back to the unit's size.
DETECT_RESOLUTION = 512
ANNOTATORS = ("none", "canny", *WEIGHTED)


class Annotators:
    """Runs annotators on ControlNet images; keeps the weighted detectors it has loaded."""

    names = ANNOTATORS

    def __init__(self):
        self._detectors: dict = {}
        self._lock = threading.Lock()
        self._import_error: str | None = None

    def apply(self, unit: dict, image: np.ndarray) -> np.ndarray:
        """The image a ControlNet unit should get: its annotator's output, or the image itself."""
        name = unit.get("annotator") or "none"
        return self.run(name, image, unit.get("annotator_options"), unit.get("annotator_weights"))

    def run(self, name: str, image: np.ndarray, options: dict | None = None, weights: str | None = None) -> np.ndarray:
        if name not in ANNOTATORS:
            raise JobError("bad_request", f"Unknown annotator '{name}'. Choose one of: {', '.join(ANNOTATORS)}")
        options = _checked_options(name, options or {})
        if name == "none":
            return image
        rgb = rgb_uint8(image)
        height, width = rgb.shape[:2]
        if name == "canny":
            return canny(rgb, **options)
        detector = self._detector(name, weights or DEFAULT_WEIGHTS)
        resolution = int(options.pop("detect_resolution", DETECT_RESOLUTION))
        try:
            output = detector(rgb, detect_resolution=resolution, image_resolution=resolution, output_type="np",
                              **options)
        except Exception as error:
            log.exception("annotator %s failed", name)
            raise JobError("annotator_failed", f"The '{name}' annotator failed: {_first_line(error)}") from None
        return _float_rgb(np.asarray(output), height, width, name)

    # -- weighted detectors -------------------------------------------------
    def _detector(self, name: str, weights: str):
        with self._lock:
            key = (name, weights)
            detector = self._detectors.get(key)
            if detector is None:
                detector = self._load(name, weights)
                self._detectors[key] = detector
            return detector

    def _load(self, name: str, weights: str):
        spec = WEIGHTED[name]
        module = self._controlnet_aux(name)
        files = ", ".join(spec.files)
        if os.path.isdir(weights):
            missing = [f for f in spec.files if not os.path.isfile(os.path.join(weights, f))]
            if missing:
                raise JobError("missing_annotator", f"The '{name}' annotator's weights are not in the folder "
                               f"'{weights}': it lacks {', '.join(missing)}. Put {files} from the hub repo "
                               f"{DEFAULT_WEIGHTS} there, or give annotator_weights a folder that has them")
        elif not _looks_like_repo_id(weights):
            raise JobError("missing_annotator", f"The folder '{weights}' for the '{name}' annotator's weights does "
                           f"not exist. Give annotator_weights a folder holding {files} (from the hub repo "
                           f"{DEFAULT_WEIGHTS}), or a hub repo id")
        try:
            detector = getattr(module, spec.detector).from_pretrained(weights)
        except Exception as error:
            if os.path.isdir(weights):
                raise JobError("missing_annotator", f"Cannot load the '{name}' annotator from the folder '{weights}': "
                               f"{_first_line(error)}. Replace {files} there with the files from the hub repo "
                               f"{DEFAULT_WEIGHTS}") from None
            raise JobError("missing_annotator", f"Cannot get the '{name}' annotator's weights from the hub repo "
                           f"'{weights}' ({_first_line(error)}). Connect the worker to the internet once, or "
                           f"download {files} from {DEFAULT_WEIGHTS} into a folder and give that folder as "
                           "annotator_weights") from None
        device = _device()
        if device != "cpu":
            detector = detector.to(device)
        log.info("loaded annotator %s from %s on %s", name, weights, device)
        return detector

    def _controlnet_aux(self, name: str):
        if self._import_error is None:
            try:
                import controlnet_aux

                return controlnet_aux
            except Exception as error:  # torchvision fails with RuntimeError, not only ImportError
                # A failed import can leave half-imported modules behind: keep the first, true reason.
                self._import_error = _first_line(error)
        raise JobError("missing_annotator", f"The '{name}' annotator needs controlnet-aux, which the worker's Python "
                       f"cannot import: {self._import_error}. " + INSTALL_HINT.format(torch=_torch_version()))


def canny(rgb: np.ndarray, low_threshold: float = 100.0, high_threshold: float = 200.0) -> np.ndarray:
    """Canny edges as controlnet-aux's CannyDetector computes them (uint8 RGB in, cv2.Canny on all
    three channels, the edge map on three channels), without its resize to 512: the edges stay on
    the image's own pixels. Returns float32 (height, width, 3) of 0 and 1."""
    cv2 = _cv2("canny")
    edges = cv2.Canny(rgb_uint8(rgb), float(low_threshold), float(high_threshold))
    return np.repeat(edges[..., None], 3, axis=2).astype(np.float32) / 255.0


def rgb_uint8(image: np.ndarray) -> np.ndarray:
    """An image as contiguous uint8 RGB, as controlnet-aux's HWC3 makes it: grey repeated, alpha
    composited over white. Floats are in [0, 1]."""
    data = np.asarray(image)
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3 or data.shape[2] not in (1, 3, 4) or min(data.shape[:2]) < 1:
        raise JobError("bad_request", f"An annotator needs a (height, width, 1, 3 or 4 channels) image, not "
                       f"{list(np.shape(image))}")
    if data.dtype != np.uint8:
        data = (np.clip(np.nan_to_num(data.astype(np.float32)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if data.shape[2] == 1:
        data = np.repeat(data, 3, axis=2)
    elif data.shape[2] == 4:
        alpha = data[..., 3:4].astype(np.float32) / 255.0
        data = np.clip(data[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(data)


def _float_rgb(output: np.ndarray, height: int, width: int, name: str) -> np.ndarray:
    """A detector's uint8 map as float32 RGB in [0, 1], scaled back to (height, width)."""
    data = rgb_uint8(output)
    if data.shape[:2] != (height, width):
        cv2 = _cv2(name)
        data = cv2.resize(data, (width, height), interpolation=cv2.INTER_LINEAR)
    return data.astype(np.float32) / 255.0


def _checked_options(name: str, options: dict) -> dict:
    """The options for ``name``, checked: known names and the right kinds of value."""
    if not isinstance(options, dict):
        raise JobError("bad_request", "annotator_options must be an object")
    if name == "none":
        allowed = {}
    elif name == "canny":
        allowed = {key: _NUMBER for key in CANNY_OPTIONS}
    else:
        allowed = dict(WEIGHTED[name].options, detect_resolution=_NUMBER)
    checked = dict(CANNY_OPTIONS) if name == "canny" else {}
    for key, value in options.items():
        if key not in allowed:
            known = ", ".join(allowed) or "none"
            raise JobError("bad_request", f"The '{name}' annotator has no option '{key}' (its options: {known})")
        if allowed[key] == _BOOL:
            if not isinstance(value, bool):
                raise JobError("bad_request", f"The '{name}' annotator's option '{key}' must be true or false")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise JobError("bad_request", f"The '{name}' annotator's option '{key}' must be a number >= 0")
        checked[key] = value
    if "detect_resolution" in checked and not 64 <= checked["detect_resolution"] <= 4096:
        raise JobError("bad_request", "detect_resolution must be between 64 and 4096")
    return checked


def _looks_like_repo_id(weights: str) -> bool:
    return (not os.path.isabs(weights) and not weights.startswith((".", "~"))
            and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", weights) is not None)


def _cv2(name: str):
    try:
        import cv2
    except Exception as error:
        raise JobError("missing_annotator", f"The '{name}' annotator needs OpenCV, which the worker's Python cannot "
                       f"import: {_first_line(error)}. Install opencv-python-headless into it, e.g. with 'Install "
                       "worker environment' in Silk's preferences") from None
    return cv2


def _device() -> str:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def _torch_version() -> str:
    """' (2.5.1+cu124)', read from the installed metadata: importing torch only to name it would be slow."""
    from importlib import metadata

    try:
        return f" ({metadata.version('torch')})"
    except metadata.PackageNotFoundError:
        return ""


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:300]
