"""The real worker process, driven through the client, with the `tiny` model."""
import os
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from silk.bridge import protocol
from silk.bridge.client import JobCancelled, JobFailed, WorkerClient, WorkerConfig, WorkerCrashed, WorkerHung, \
    WorkerTimeout, WorkerUnavailable
from silk.bridge.frames import DIRECTORY_PREFIX, SharedFrames, shared_root
from tests.bridge.conftest import TINY, control_images, worker_python
from tests.bridge.test_protocol import mutations


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie counts as gone
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except OSError:
        return True


def test_start_ping_status_and_log(make_client):
    client = make_client()
    client.ensure_started()
    assert client.shared_frames
    assert client.ping()["type"] == "pong"
    status = client.status()
    assert status["busy"] is False and status["pid"] == client.worker_pid
    with open(client.log_path) as handle:
        assert "listening on 127.0.0.1" in handle.read()


def test_frames_round_trip_through_shared_memory(make_client):
    client = make_client()
    client.ensure_started()
    frame = np.random.default_rng(1).random((37, 53, 4), dtype=np.float32)
    attachments = []
    descriptor = client.frame(frame, attachments)
    assert "file" in descriptor and not attachments
    output, output_descriptor = client.buffer(frame.shape, np.float32, name="echo-out")
    result = client.echo(descriptor, output=output_descriptor)
    assert np.array_equal(result, frame) and np.shares_memory(result, output)


def test_generate_with_tiny_model(make_client):
    client = make_client()
    progress = []
    image, info = client.generate(TINY, "a lighthouse at dusk", control_images(64, 80), 80, 64, steps=6, seed=11,
                                  preview=True, on_progress=progress.append)
    assert image.shape == (64, 80, 3) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.01
    assert [p.step for p in progress] == [1, 2, 3, 4, 5, 6] and all(p.steps == 6 for p in progress)
    preview = progress[-1].preview  # from the latents: one pixel per 8x8 block of the 80x64 frame
    assert preview is not None and preview.dtype == np.uint8 and preview.shape == (8, 10, 3)
    again, _ = client.generate(TINY, "a lighthouse at dusk", control_images(64, 80), 80, 64, steps=6, seed=11)
    assert np.array_equal(image, again)  # same seed, same picture
    other, _ = client.generate(TINY, "a lighthouse at dusk", control_images(64, 80), 80, 64, steps=6, seed=12)
    assert not np.array_equal(image, other)
    assert info["seed"] == 11 and info["model"] == "tiny"


def test_image_to_image_with_a_strength_mask(make_client):
    """Through the worker: the mask is taken and changes the picture. (Which latents it keeps is
    checked exactly in test_backend.py: tiny's VAE decoder, like SD's, mixes the whole picture
    through its GroupNorm layers, so pixels cannot show it.)"""
    client = make_client()
    base, _ = client.generate(TINY, "x", control_images(64, 64), 64, 64, steps=4, seed=1)

    def run(mask):
        return client.generate(TINY, "x", control_images(64, 64), 64, 64, steps=8, seed=2, init_image=base,
                               strength=1.0, mask=mask)[0]

    half = np.zeros((64, 64), dtype=np.float32)
    half[:, 32:] = 1.0
    plain = run(None)
    masked = run(half)
    kept = run(np.zeros((64, 64), np.float32))
    assert masked.shape == (64, 64, 3)
    assert np.abs(masked - plain).mean() > 0.01 and np.abs(kept - plain).mean() > 0.01


def test_odd_sizes_come_back_exactly(make_client):
    client = make_client()
    image, _ = client.generate(TINY, "x", control_images(50, 77), 77, 50, steps=2)
    assert image.shape == (50, 77, 3)


def test_cancel_takes_effect_within_one_step(make_client):
    client = make_client()
    client.load_model(TINY)
    seen = []
    with pytest.raises(JobCancelled):
        client.generate(TINY, "x", control_images(), 80, 64, steps=300, on_progress=seen.append,
                        should_cancel=lambda: len(seen) >= 3)
    assert 3 <= len(seen) <= 5, f"{len(seen)} steps ran after asking at step 3"
    image, _ = client.generate(TINY, "x", control_images(), 80, 64, steps=2)  # still ready
    assert image.shape == (64, 80, 3)


def test_killed_worker_is_reported_within_5_seconds_and_replaced(make_client):
    client = make_client()
    client.load_model(TINY)
    first_pid = client.worker_pid
    killed_at = []

    def kill_at_step_two(progress):
        if progress.step == 2 and not killed_at:
            os.kill(first_pid, signal.SIGKILL)
            killed_at.append(time.monotonic())

    with pytest.raises(WorkerCrashed) as caught:
        client.generate(TINY, "x", control_images(), 80, 64, steps=300, on_progress=kill_at_step_two)
    assert time.monotonic() - killed_at[0] < 5.0
    assert "stopped unexpectedly" in str(caught.value)
    image, _ = client.generate(TINY, "x", control_images(), 80, 64, steps=2)  # a fresh worker, by itself
    assert client.worker_pid != first_pid and image.shape == (64, 80, 3)


def test_hung_worker_is_detected_by_heartbeat_and_killed(make_client):
    client = make_client(heartbeat_timeout=2.0)
    client.load_model(TINY)
    hung_pid = client.worker_pid
    stopped_at = []

    def freeze(progress):
        if not stopped_at:
            os.kill(hung_pid, signal.SIGSTOP)
            stopped_at.append(time.monotonic())

    with pytest.raises(WorkerHung):
        client.generate(TINY, "x", control_images(), 80, 64, steps=300, on_progress=freeze)
    assert time.monotonic() - stopped_at[0] < 2.0 + 2.0
    deadline = time.monotonic() + 5
    while alive(hung_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(hung_pid)
    assert client.ping()["type"] == "pong"  # restarted


def test_every_wait_has_a_deadline(make_client):
    client = make_client()
    client.load_model(TINY)
    started = time.monotonic()
    with pytest.raises(WorkerTimeout):
        client.generate(TINY, "x", control_images(), 80, 64, steps=500, timeout=1.0)
    assert time.monotonic() - started < 3.0


def test_crash_leaves_no_shared_frames(make_client):
    client = make_client()
    client.ensure_started()
    directory = client.frames.directory
    client.frame(np.ones((16, 16, 3), np.float32), [])
    os.kill(client.worker_pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashed):
        client.ping()
        client.generate(TINY, "x", control_images(), 80, 64, steps=50)
    client.stop()
    assert not os.path.exists(directory)


def test_frame_directories_of_dead_clients_are_swept():
    root = shared_root()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = os.path.join(root, f"{DIRECTORY_PREFIX}{dead.pid}-deadbeef")
    os.makedirs(stale)
    open(os.path.join(stale, "f1"), "wb").close()
    frames = SharedFrames()
    try:
        assert not os.path.exists(stale)
    finally:
        frames.close()


def test_worker_exits_when_its_parent_goes_away(tmp_path, worker_env):
    """A parent process starts a worker, then dies: the worker must not outlive it."""
    pid_file = tmp_path / "worker.pid"
    script = f"""
import sys, time
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))!r})
from tools.blender_env import load_silk
load_silk(register=False)
from silk.bridge.client import WorkerClient, WorkerConfig
client = WorkerClient(WorkerConfig(python={worker_python()!r}, log_path={str(tmp_path / 'w.log')!r}))
client.ensure_started()
open({str(pid_file)!r}, 'w').write(str(client.worker_pid))
time.sleep(60)
"""
    parent = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    worker_pid = int(pid_file.read_text())
    assert alive(worker_pid)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while alive(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(worker_pid)
    # The dead parent's frame directory is swept by the next client.
    SharedFrames().close()


def test_clear_errors_for_bad_models_and_settings(make_client, model_cache):
    client = make_client()
    with pytest.raises(JobFailed, match="does not exist"):
        client.load_model({"source": "/no/such/model/folder"})
    with pytest.raises(JobFailed, match="ControlNet 'nope/missing'"):
        client.load_model({"source": "tiny", "controlnets": ["nope/missing", "nope/other"]})
    with pytest.raises(JobFailed, match="neither a local folder nor a model the hub"):
        client.load_model({"source": "someone/not-a-real-model", "controlnets": ["x"]})
    with pytest.raises(JobFailed, match="unknown scheduler 'warp'"):
        client.generate(TINY, "x", control_images(), 80, 64, steps=2, scheduler="warp")
    with pytest.raises(JobFailed, match="no CUDA"):
        client.load_model({"source": "tiny", "device": "cuda"})
    with pytest.raises(JobFailed, match="2 ControlNets"):
        client.generate(TINY, "x", control_images()[:1], 80, 64, steps=2)
    bogus = os.path.join(os.path.dirname(client.log_path), "broken.safetensors")
    with open(bogus, "wb") as handle:
        handle.write(b"not a checkpoint")
    from silk.bridge.tiny_model import CONTROLNET_FOLDERS, ensure_tiny

    tiny_controlnets = [os.path.join(ensure_tiny(model_cache), folder) for folder in CONTROLNET_FOLDERS]
    with pytest.raises(JobFailed, match="Cannot load the model"):
        client.load_model({"source": bogus, "controlnets": tiny_controlnets})
    with pytest.raises(JobFailed, match="not a .safetensors or .ckpt"):
        client.load_model({"source": client.log_path, "controlnets": tiny_controlnets})
    assert client.ping()["type"] == "pong"  # the worker survived all of it


def test_out_of_memory_is_a_clear_error_and_the_worker_survives(make_client, worker_env):
    # The worker's memory is capped (SILK_WORKER_MEMORY_LIMIT_MB), the CPU twin of a full GPU:
    # a 4096x4096 frame (the largest the worker accepts) needs more than the cap.
    client = make_client(env=dict(worker_env, SILK_WORKER_MEMORY_LIMIT_MB="3072"))
    client.load_model(TINY)
    with pytest.raises(JobFailed) as caught:
        client.generate(TINY, "x", control_images(8, 8), 4096, 4096, steps=1, timeout=120)
    assert caught.value.code == "out_of_memory"
    assert "attention slicing" in str(caught.value) and "still running" in str(caught.value)
    image, _ = client.generate(TINY, "x", control_images(), 80, 64, steps=2)
    assert image.shape == (64, 80, 3)


def test_missing_worker_python_names_the_fix(tmp_path):
    client = WorkerClient(WorkerConfig(python=str(tmp_path / "nope" / "python"), log_path=str(tmp_path / "w.log")))
    with pytest.raises(WorkerUnavailable, match="SILK_WORKER_PYTHON|Install worker environment"):
        client.ensure_started()
    assert client.state == "error"


@pytest.fixture(scope="module")
def bare_pythons(tmp_path_factory):
    """Two worker Pythons that cannot run diffusion: an empty venv, and one with numpy only."""
    base = tmp_path_factory.mktemp("pythons")
    empty, numpy_only = base / "empty", base / "numpy-only"
    for folder in (empty, numpy_only):
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target",
                    str(next((numpy_only / "lib").glob("python3*")) / "site-packages"), "numpy<2"], check=True)
    return {"empty": str(empty / "bin" / "python"), "numpy_only": str(numpy_only / "bin" / "python")}


@pytest.mark.parametrize("kind, missing", [("empty", "numpy, torch"), ("numpy_only", "torch")])
def test_python_without_the_libraries_names_the_fix(tmp_path, bare_pythons, kind, missing):
    client = WorkerClient(WorkerConfig(python=bare_pythons[kind], log_path=str(tmp_path / "w.log")))
    with pytest.raises(WorkerUnavailable) as caught:
        client.ensure_started()
    message = str(caught.value)
    assert missing in message and "Install worker environment" in message
    assert "Traceback" not in message
    client.stop()


def start_remote_worker(tmp_path, worker_env, token):
    port_file = tmp_path / "port"
    env = dict(os.environ, **worker_env, SILK_WORKER_TOKEN=token)
    log = open(tmp_path / "remote.log", "wb")
    process = subprocess.Popen([worker_python(), os.path.join(os.path.dirname(protocol.__file__), "worker.py"),
                                "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file)],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while not port_file.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    return process, int(port_file.read_text())


def test_remote_worker_needs_the_token_and_sends_frames_inline(tmp_path, worker_env):
    process, port = start_remote_worker(tmp_path, worker_env, "the-right-token")
    try:
        intruder = WorkerClient(WorkerConfig(remote=("127.0.0.1", port, "wrong")))
        with pytest.raises((JobFailed, WorkerUnavailable), match="wrong token"):
            intruder.ensure_started()
        intruder.stop()
        client = WorkerClient(WorkerConfig(remote=("127.0.0.1", port, "the-right-token")))
        client.ensure_started()
        assert not client.shared_frames
        frame = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
        attachments = []
        descriptor = client.frame(frame, attachments)
        assert descriptor["attachment"] == 0 and len(attachments) == 1
        assert np.array_equal(client.echo(descriptor, attachments), frame)
        image, _ = client.generate(TINY, "x", control_images(), 80, 64, steps=2)
        assert image.shape == (64, 80, 3) and image.std() > 0
        client.stop()  # asks a remote worker to shut down
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_worker_listens_on_loopback_by_default(tmp_path, worker_env):
    process, port = start_remote_worker(tmp_path, worker_env, "t")
    try:
        with open(f"/proc/{process.pid}/net/tcp") as handle:
            listening = [line.split() for line in handle.readlines()[1:] if line.split()[3] == "0A"]
        addresses = {entry[1] for entry in listening if int(entry[1].split(":")[1], 16) == port}
        assert addresses == {f"0100007F:{port:04X}"}  # 127.0.0.1 only
    finally:
        process.kill()
        process.wait()


def starts_work(payload: bytes) -> bool:
    try:
        message = protocol.validate_request(protocol.decode_json(payload))
    except protocol.ProtocolError:
        return False
    return message["type"] in ("shutdown", "generate", "load_model", "echo")


def test_live_worker_survives_ten_thousand_bad_messages(tmp_path, worker_env):
    process, port = start_remote_worker(tmp_path, worker_env, "fuzz")
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        reader = protocol.StreamReader(sock)
        sock.sendall(protocol.encode({"type": "hello", "id": 1, "protocol": 1, "token": "fuzz"}))
        assert reader.read_message()[0]["type"] == "hello"
        rng = random.Random(99)
        errors = 0
        batch = []
        # Valid job and shutdown requests do real work or stop the worker (tested elsewhere);
        # every other mutation must get exactly one reply.
        payloads = [p for p in mutations(rng, 12000) if not starts_work(p)][:10000]
        assert len(payloads) == 10000
        # Oversized messages are part of the mix: declared and sent in full, then refused.
        payloads += [b"{" + b" " * (protocol.MAX_JSON_BYTES + 1) + b"}"] * 3
        for index, payload in enumerate(payloads):
            batch.append(protocol.HEADER.pack(len(payload)) + payload)
            if len(batch) == 100 or index == len(payloads) - 1:
                sock.sendall(b"".join(batch))
                for _ in batch:
                    reply, _ = reader.read_message()
                    # Almost every mutation is invalid; a valid one (e.g. ping) gets its normal reply.
                    errors += reply["type"] == "error"
                batch = []
        assert errors > 9000
        sock.sendall(protocol.encode({"type": "ping", "id": 5}))
        assert reader.read_message()[0] == {"type": "pong", "reply_to": 5, "busy": False}
        assert process.poll() is None
        sock.close()
    finally:
        process.kill()
        process.wait()


def test_memory_options_load_and_generate(make_client):
    """Attention slicing and VAE tiling work on any device (CPU offload needs CUDA: off here)."""
    client = make_client()
    model = {"source": "tiny", "attention_slicing": True, "vae_tiling": True, "cpu_offload": True,
             "precision": "fp16"}  # an explicit fp16 is honoured on the CPU too
    info = client.load_model(model)
    assert info["device"] == "cpu" and info["dtype"] == "float16" and info["family"] == "sd15"
    image, _ = client.generate(model, "x", control_images(), 80, 64, steps=2)
    assert image.shape == (64, 80, 3) and np.isfinite(image).all()
    status = client.status()
    assert status["device"] == "cpu" and status["models"] == ["tiny"]
    assert {c["dtype"] for c in status["loaded"][0]["components"].values()} == {"float16"}


def test_a_worker_that_stops_reading_cannot_block_a_send(tmp_path, worker_env):
    """Sending a big inline frame to a frozen remote worker ends within the send timeout."""
    process, port = start_remote_worker(tmp_path, worker_env, "t")
    try:
        client = WorkerClient(WorkerConfig(remote=("127.0.0.1", port, "t"), send_timeout=2.0))
        client.ensure_started()
        os.kill(process.pid, signal.SIGSTOP)
        frame = np.zeros((2048, 2048, 4), np.float32)  # 64 MiB: more than the socket buffers hold
        attachments = []
        descriptor = client.frame(frame, attachments)
        started = time.monotonic()
        with pytest.raises((WorkerHung, WorkerCrashed)):
            client.echo(descriptor, attachments, timeout=60)
        assert time.monotonic() - started < 10
        client.stop()
    finally:
        process.kill()
        process.wait()
