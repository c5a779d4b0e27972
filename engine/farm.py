"""Shots as the unit of farm work, and the records farm tasks leave beside their frames. No ``bpy``.

Silk paints a shot in order: each frame starts from the previous frame's painting. A farm
therefore gets whole shots as tasks (shots run side by side on different machines), and a
shot longer than a chosen maximum is split into chunks that must run one after the other;
each chunk continues from the painting the chunk before left on shared storage (the
sidecars, see ``animation.py``). The shots are the engine's own (``schedule.shot_of``: camera
changes, Shot markers, the frame range), so a farm cuts exactly where a local render
restarts feedback.

A chunk ends on a cadence key: the frames after it are built from that key and the next,
and a key is only trusted from disk once its frame file exists.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass

from . import schedule

RECORD_FOLDER = os.path.join(".silk", "farm")  # beside the frames, next to the sidecars
RECORD_VERSION = 1


class FarmPlanError(ValueError):
    """The scene cannot be split into farm work as it is (the message says why)."""


@dataclass(frozen=True)
class Chunk:
    first: int
    last: int  # inclusive

    def __len__(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class FarmShot:
    """One shot as farm work."""

    start: int
    end: int  # inclusive
    keys: tuple  # the frames diffused (every frame without cadence); the rest are built between keys
    loop_frames: tuple  # the first frames a looping shot repaints after its last frame (empty: no loop)
    chunks: tuple  # Chunk, in order; each continues from the one before
    chained: bool  # False: frames are painted independently (no feedback), chunks may run at once

    def as_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "keys": list(self.keys), "loop_frames": list(self.loop_frames),
                "chunks": [[chunk.first, chunk.last] for chunk in self.chunks], "chained": self.chained}


def plan_shots(frame_start: int, frame_end: int, cuts, cadence: int = 1, use_feedback: bool = True,
               loop_frames: int = 0, max_frames: int = 0, frame_step: int = 1) -> list:
    """The shots of the range ``frame_start..frame_end`` as farm work.

    ``cuts``: the frames where feedback restarts (``job_settings.shot_cuts``). ``loop_frames``:
    0 for no loop. ``max_frames``: the longest chunk (0: whole shots)."""
    frame_start, frame_end, cadence, max_frames = int(frame_start), int(frame_end), int(cadence), int(max_frames)
    if frame_end < frame_start:
        raise FarmPlanError(f"The frame range {frame_start}-{frame_end} is empty")
    if frame_step != 1:
        raise FarmPlanError(f"Frame step {frame_step}: farm jobs split shots frame by frame; set the frame step to 1 "
                            "(Silk's cadence paints every n-th frame and still gives every frame)")
    if max_frames < 0:
        raise FarmPlanError(f"The longest chunk must be 0 (whole shots) or more frames, not {max_frames}")
    cadence = max(1, cadence) if use_feedback else 1
    cuts = list(cuts)
    shots = []
    frame = frame_start
    while frame <= frame_end:
        shot = schedule.shot_of(frame, frame_start, frame_end, cuts)
        keys = tuple(f for f in range(shot.start, shot.end + 1) if schedule.cadence_step(f, shot, cadence).is_key)
        loop = min(int(loop_frames), shot.end - shot.start) if use_feedback else 0
        shots.append(FarmShot(shot.start, shot.end, keys, tuple(range(shot.start, shot.start + max(0, loop))),
                              tuple(split(shot, keys, max_frames)), chained=use_feedback))
        frame = shot.end + 1
    return shots


def split(shot: schedule.Shot, keys, max_frames: int) -> list:
    """``shot`` in chunks of at most ``max_frames`` frames (0: one chunk), each ending on a key.

    Where the keys lie further apart than ``max_frames`` (cadence above the maximum) a chunk
    runs to the next key: shorter chunks would paint the key ahead twice."""
    if max_frames <= 0 or shot.end - shot.start + 1 <= max_frames:
        return [Chunk(shot.start, shot.end)]
    keys = sorted(keys)
    chunks, first = [], shot.start
    while first <= shot.end:
        limit = first + max_frames - 1
        fitting = [key for key in keys if first <= key <= limit]
        last = fitting[-1] if fitting else min(key for key in keys if key >= first)
        chunks.append(Chunk(first, last))
        first = last + 1
    return chunks


def shots_json(shots) -> str:
    """The shot list a farm job carries (Flamenco's Silk job type reads this)."""
    return json.dumps({"silk_shots": 1, "shots": [shot.as_dict() for shot in shots]}, separators=(",", ":"))


# -- records: what a finished farm task leaves beside its frames --------------------------
def record_folder(frames_folder: str) -> str:
    return os.path.join(frames_folder, RECORD_FOLDER)


def write_record(frames_folder: str, scene: str, label: str, chunk: Chunk, files: dict) -> str:
    """Note that ``chunk``'s frames are finished (``files``: frame -> file name in
    ``frames_folder``). One file per chunk, written whole or not at all, so nodes finishing at
    the same moment never write the same file."""
    folder = record_folder(frames_folder)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{chunk.first:07d}-{chunk.last:07d}.json")
    record = {"silk_farm_record": RECORD_VERSION, "scene": scene, "label": label, "first": chunk.first,
              "last": chunk.last, "files": {str(frame): os.path.basename(name) for frame, name in files.items()},
              "node": socket.gethostname(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    temporary = path + ".part"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)
    os.replace(temporary, path)
    return path


@dataclass
class FarmTake:
    """A farm job's frames as one take: what its finished tasks recorded."""

    folder: str
    scene: str
    label: str
    start: int
    files: list  # paths of the frames from ``start`` on, contiguous
    missing: list  # frames inside the recorded range without a file (a task still running or failed)
    end: int  # the last recorded frame


MAX_RECORD_BYTES = 1 << 20  # a record is a few kB; anything bigger is not ours


def read_take(frames_folder: str) -> FarmTake:
    """The take the records in ``frames_folder`` describe. Raises FileNotFoundError (no
    records) or FarmPlanError (records of different scenes)."""
    folder = record_folder(frames_folder)
    names = sorted(name for name in os.listdir(folder) if name.endswith(".json")) if os.path.isdir(folder) else []
    files, scenes, labels = {}, set(), []
    for name in names:
        path = os.path.join(folder, name)
        try:
            if os.path.getsize(path) > MAX_RECORD_BYTES:
                continue
            with open(path, encoding="utf-8") as handle:
                record = json.load(handle)
            if record.get("silk_farm_record") != RECORD_VERSION:
                continue
            for frame, file_name in record["files"].items():
                files[int(frame)] = os.path.join(frames_folder, os.path.basename(str(file_name)))
            scenes.add(str(record["scene"]))
            labels.append((int(record["first"]), str(record.get("label", ""))))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # a damaged or foreign file: the frames it names are checked below anyway
    if not files:
        raise FileNotFoundError(f"No Silk farm records in {folder}: is this a Silk job's output folder, and has "
                                "one of its tasks finished?")
    if len(scenes) > 1:
        raise FarmPlanError(f"{frames_folder} holds frames of several scenes ({', '.join(sorted(scenes))})")
    start, end = min(files), max(files)
    present, missing = [], []
    for frame in range(start, end + 1):
        path = files.get(frame)
        if path is not None and os.path.isfile(path):
            if not missing:
                present.append(path)
        else:
            missing.append(frame)
    label = min(labels)[1] if labels else ""
    return FarmTake(frames_folder, scenes.pop(), label, start, present, missing, end)
