"""The README's commands name things that exist; the Dockerfile lints clean; CI runs the README's test command."""

import importlib.util
import json
import os
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


# The README's commands that a test run on one CPU machine cannot or need not run, each with the reason; every other
# command of its ```bash blocks runs, in order, in the next test.
NOT_RUN_HERE = {
    r"^make test": "the test tiers themselves (this test is part of make test-all)",
    r"^make (demo-learn|bench|bench-data|bench-phi4mm|bench-errors)(\s|$)": "minutes to tens of minutes on the CPU; "
    "tests/test_learning.py, tests/test_bench.py and tests/test_phi4mm.py run them, tests/test_cli.py the errors' imports",
    r"your-hf-name": "needs the Hub: a pushed repo, a token and the network",
    r"burberry_(lora|full_fsdp)": "the real Phi-3-Vision (8 GB download) on a GPU",
    r"docker": "needs docker and an NVIDIA GPU; tests/test_container.py builds the image",
    r"^make app\b": "serves until stopped; tests/test_app.py serves it on 127.0.0.1",
}


def files_under(root: Path, folders=("outputs", "data")) -> dict[str, str]:
    """Every file below the folders that commands write, with a hash of its bytes."""
    import hashlib

    return {
        str(path.relative_to(root)): hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
        for folder in folders
        for path in sorted((root / folder).rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def command_name(line: str) -> str:
    """`make demo`, `phi3v-recipe evaluate` (written either way the README writes it), ..."""
    if match := re.search(r"phi3v[-_]recipe(?: |\.)(\w[\w-]*)", line):
        return f"phi3v-recipe {match[1]}"
    return " ".join(line.split()[:2])


@pytest.mark.slow
def test_the_readme_commands_run_in_order_on_a_fresh_clone_and_none_destroys_another_ones_output(tmp_path):
    """A new user's session: a fresh clone of the committed project, the README's commands in their order (make demo
    first: it sets up .venv), the user's own files that the README names (bag.jpg, shoe.jpg, chat.json) made from
    the sample set. Each command must succeed, and no file an earlier command wrote may be changed or deleted by a
    later, different command (rerunning a command's own output, such as evaluate's ADAPTER/eval, is allowed)."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    lines = shell_lines((clone / "README.md").read_text())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": ""}
    env.pop("VIRTUAL_ENV", None)

    def users_own_files():
        from PIL import Image

        sample = clone / "data/sample/images"
        Image.open(sample / "SYN000000002.png").convert("RGB").save(clone / "bag.jpg")
        Image.open(sample / "SYN000000003.png").convert("RGB").save(clone / "shoe.jpg")
        chat = [
            {
                "role": "user",
                "content": [{"type": "image", "path": "bag.jpg"}, {"type": "text", "text": "What is it?"}],
            },
            {"role": "assistant", "content": "A bag."},
            {"role": "user", "content": "And its price?"},
        ]
        (clone / "chat.json").write_text(json.dumps(chat))

    written_by: dict[str, str] = {}  # file -> the command that last wrote it
    before = files_under(clone)
    ran, skipped = [], []
    for line in lines:
        reason = next((why for pattern, why in NOT_RUN_HERE.items() if re.search(pattern, line)), None)
        if reason:
            skipped.append(f"{line}  <- {reason}")
            continue
        if "bag.jpg" in line or "chat.json" in line:
            if not (clone / "bag.jpg").exists():
                users_own_files()
        result = subprocess.run(
            ["bash", "-c", line], cwd=clone, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=1800,
        )  # fmt: skip
        assert result.returncode == 0, (
            f"`{line}` failed ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
        after = files_under(clone)
        program = command_name(line)
        for path, digest in before.items():
            owner = written_by.get(path)
            if owner is None or owner == program:
                continue
            assert path in after, f"`{line}` deleted {path}, written by `{owner}`"
            assert after[path] == digest, f"`{line}` changed {path}, written by `{owner}`"
        for path, digest in after.items():
            if before.get(path) != digest:
                written_by[path] = program
        before = after
        ran.append(line)
    print("\nRan:\n  " + "\n  ".join(ran) + "\nNot run here:\n  " + "\n  ".join(skipped))
    assert any(line.startswith("make demo") for line in ran) and len(ran) >= 12
    assert (clone / "outputs/demo/model.safetensors").exists() and (clone / "outputs/demo-100").is_dir()
