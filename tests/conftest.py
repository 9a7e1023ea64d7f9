import contextlib
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path

import pytest
from safetensors.torch import load_file

import phi3v_recipe  # noqa: F401  (registers phi3_v with the Auto classes)
from phi3v_recipe.tiny import write_tiny_checkpoint

# Prepared rows (phi3v_recipe/data/prepared.py) go to a folder of this test session, for its subprocesses too,
# removed when the session ends.
SESSION_PREPARED = None if "PHI3V_PREPARED_DIR" in os.environ else tempfile.mkdtemp(prefix="phi3v-prepared-")
if SESSION_PREPARED:
    os.environ["PHI3V_PREPARED_DIR"] = SESSION_PREPARED


def pytest_sessionfinish(session, exitstatus):
    if SESSION_PREPARED:
        shutil.rmtree(SESSION_PREPARED, ignore_errors=True)


SHARED = Path(__file__).resolve().parents[2] / "shared" / "phi3v"
HUB_MODELS = ["Phi-3-vision-128k-instruct", "Phi-3.5-vision-instruct"]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random Phi-3-Vision checkpoint in the hub layout (written once per test session)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


@pytest.fixture(scope="session")
def tiny4_dir(tmp_path_factory) -> Path:
    """A tiny random Phi-4-multimodal checkpoint in the hub layout, with its vision-lora/ (once per test session)."""
    from phi3v_recipe.families import phi4mm
    from phi3v_recipe.tiny import CORPUS

    out = tmp_path_factory.mktemp("tiny4") / "ckpt"
    phi4mm.write_tiny(out, CORPUS)
    return out


@pytest.fixture(scope="session")
def tiny_state_dict(tiny_dir):
    return load_file(tiny_dir / "model.safetensors")


@pytest.fixture(scope="session")
def tiny_config_dict(tiny_dir):
    return json.loads((tiny_dir / "config.json").read_text())


@pytest.fixture(scope="session")
def shared() -> Path:
    """../shared/phi3v (real hub configs, tokenizers and fixtures); tests that need it skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared/phi3v is not present")
    return SHARED


def free_port() -> int:
    """A port nothing listens on now: fixed ports collide when two test runs share the machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def killed_after(process, seconds: float):
    """Blocking reads of ``process``'s output end by ``seconds``: then its process group (it was started in a session
    of its own) is killed, the reads see the end of the output, and the test fails instead of hanging."""

    def kill():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    timer = threading.Timer(seconds, kill)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
