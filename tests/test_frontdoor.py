"""The README's commands name things that exist; the Dockerfile lints clean; CI runs the README's test command."""

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shell_lines(markdown: str) -> list[str]:
    """Commands of the ```bash blocks, with continuation lines joined."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-zA-Z][\w-]*):", text, re.MULTILINE))


def test_readme_commands_name_existing_targets_modules_and_files():
    lines = shell_lines((ROOT / "README.md").read_text())
    assert len(lines) > 15
    targets = make_targets()
    checked = 0
    for line in lines:
        for target in re.findall(r"\bmake ([a-z][\w-]*)", line):
            assert target in targets, f"README runs `make {target}`, which the Makefile lacks: {line}"
            checked += 1
        for module in re.findall(r"-m (phi3v_recipe(?:\.\w+)*)", line):
            assert importlib.util.find_spec(module) is not None, f"README runs a missing module {module}: {line}"
            checked += 1
        for path in re.findall(r"(?:--config(?:_file)?|-f) ((?:recipes|accelerate_configs|docker)/[\w./-]+)", line):
            assert (ROOT / path).is_file(), f"README names a missing file {path}: {line}"
            checked += 1
        for recipe in re.findall(r"RECIPE=(\w+)", line):
            assert (ROOT / "recipes" / f"{recipe}.yaml").is_file(), f"README names a missing recipe {recipe}"
    assert checked > 20


def test_readme_mentions_every_recipe_and_accelerate_config():
    readme = (ROOT / "README.md").read_text()
    for path in [*(ROOT / "recipes").glob("*.yaml"), *(ROOT / "accelerate_configs").glob("*.yaml")]:
        assert path.name in readme, path.name


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in shell_lines((ROOT / "README.md").read_text())
    assert re.search(r"^make test$", ci, re.MULTILINE)
    assert "set -euo pipefail" in ci


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is missing: it is part of the dev extra (make setup installs it)")
    result = subprocess.run([hadolint, "docker/Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_dockerignore_keeps_data_and_weights_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", "data", "outputs", "wandb", ".git"):
        assert entry in ignored
