"""Slow: the image is built here with no package index (a local wheelhouse) and `make demo` runs inside it."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_image_builds_offline_and_runs_the_demo():
    missing = [tool for tool in ("buildah", "podman", "debootstrap") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install buildah podman debootstrap)")
    result = subprocess.run(["make", "docker-smoke"], cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Scored evaluation (template) on 120 rows" in result.stdout
    assert "Product: " in result.stdout.split("One prediction with the trained model")[1]
