"""The README's and the docs' commands name things that exist and run; the docs build strict; the README stays a short
front door; the Dockerfile lints clean; CI runs the README's test command."""

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


def documented_files(root: Path = ROOT) -> list[Path]:
    """The README, then every page of the documentation site in its navigation order (the order a reader follows)."""
    import yaml

    nav = yaml.safe_load((root / "mkdocs.yml").read_text())["nav"]
    return [root / "README.md", *(root / "docs" / page for entry in nav for page in entry.values())]


def documented_commands(root: Path = ROOT) -> list[str]:
    """Every shell command of the README and the docs, each once, in reading order."""
    return list(dict.fromkeys(line for path in documented_files(root) for line in shell_lines(path.read_text())))


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-zA-Z][\w-]*):", text, re.MULTILINE))


def test_documented_commands_name_existing_targets_modules_and_files():
    lines = documented_commands()
    assert len(lines) > 40
    targets = make_targets()
    checked = 0
    for line in lines:
        for target in re.findall(r"\bmake ([a-z][\w-]*)", line):
            assert target in targets, f"the docs run `make {target}`, which the Makefile lacks: {line}"
            checked += 1
        for module in re.findall(r"-m (phi3v_recipe(?:\.\w+)*)", line):
            assert importlib.util.find_spec(module) is not None, f"the docs run a missing module {module}: {line}"
            checked += 1
        for path in re.findall(r"(?:--config(?:_file)?|-f) ((?:recipes|accelerate_configs|docker)/[\w./-]+)", line):
            assert (ROOT / path).is_file(), f"the docs name a missing file {path}: {line}"
            checked += 1
        for recipe in re.findall(r"RECIPE=(\w+)", line):
            assert (ROOT / "recipes" / f"{recipe}.yaml").is_file(), f"the docs name a missing recipe {recipe}"
    assert checked > 20


def test_readme_and_the_docs_mention_every_recipe_and_accelerate_config():
    recipes, configs = [*(ROOT / "recipes").glob("*.yaml")], [*(ROOT / "accelerate_configs").glob("*.yaml")]
    for page, paths in {"README.md": recipes + configs, "docs/recipes.md": recipes, "docs/scale.md": configs}.items():
        text = (ROOT / page).read_text()
        for path in paths:
            assert path.name in text, f"{page} does not mention {path.name}"


def test_the_readme_is_a_short_front_door_that_links_into_the_docs():
    """Under 200 lines; the two commands and "train on your own data" on its first screen; every link it makes into
    docs/ names a page of the site."""
    readme = (ROOT / "README.md").read_text()
    lines = readme.splitlines()
    assert len(lines) < 200, len(lines)
    first_screen = "\n".join(lines[:45])
    assert "make demo" in first_screen and "make test" in first_screen
    assert "## Train on your own data" in first_screen
    links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", readme)
    assert len(links) >= 8
    pages = {str(path.relative_to(ROOT)) for path in documented_files()}
    for link in links:
        assert link in pages, f"README links to {link}, which is not a page of the site (mkdocs.yml nav)"


def test_the_docs_build_strict_and_list_every_recipe_key(tmp_path):
    """mkdocs --strict fails on a broken link or anchor and on a page left out of the navigation; the keys page is
    generated from the dataclasses the parser reads, so it lists every key there is."""
    from phi3v_recipe.config import known_keys

    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    keys_page = (site / "recipes" / "index.html").read_text()
    missing = [key for key in known_keys() - {"env"} if f"<td><code>{key}</code></td>" not in keys_page]
    assert not missing, f"the keys page lacks {missing}"
    for path in documented_files()[1:]:
        page = path.stem
        assert (site / ("index.html" if page == "index" else f"{page}/index.html")).is_file(), page


def test_a_broken_link_fails_the_strict_docs_build(tmp_path):
    """The check above can fail: the same build on a copy of the docs with one anchor misspelt stops."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    page = tmp_path / "docs" / "troubleshooting.md"
    page.write_text(page.read_text() + "\nSee [the formats](own-data.md#no-such-section).\n")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert "no-such-section" in result.stdout + result.stderr


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in shell_lines((ROOT / "README.md").read_text())
    assert re.search(r"^make test$", ci, re.MULTILINE)
    assert re.search(r"^make docs\b", ci, re.MULTILINE)
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


# The documented commands that a test run on one CPU machine cannot or need not run, each with the reason; every other
# command of the ```bash blocks of the README and the docs runs, in reading order, in the next test.
NOT_RUN_HERE = {
    r"^make test": "the test tiers themselves (this test is part of make test-all)",
    r"^make (demo-learn|bench|bench-data|bench-phi4mm|bench-errors)(\s|$)": "minutes to tens of minutes on the CPU; "
    "tests/test_learning.py, tests/test_bench.py and tests/test_phi4mm.py run them, tests/test_cli.py the errors' imports",
    r"your-hf-name": "needs the Hub: a pushed repo, a token and the network",
    r"^(?!phi3v-recipe plan).*(burberry_(lora|full_fsdp)|train RECIPE=burberry_)": "the real Phi-3-Vision (8 GB "
    "download) on a GPU",
    r"^make bench-fullsize": "the real model's hub files and ~30 min at ~22 GiB; tests/test_fullsize.py and "
    "tests/test_memory.py run its parts",
    r"^make gpu-check": "minutes on a GPU; tests/test_gpu_check.py runs it at tiny size on the CPU",
    r"^sky ": "needs SkyPilot and a cloud account; tests/test_cluster.py loads the task with SkyPilot's own loader",
    r"^make docs-serve": "serves until stopped; the docs build is tested by test_the_docs_build_strict_...",
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
def test_the_documented_commands_run_in_order_on_a_fresh_clone_and_none_destroys_another_ones_output(tmp_path):
    """A new user's session: a fresh clone of the committed project, the commands of the README and then of the docs'
    pages in their navigation order (getting started first; make demo first of all: it sets up .venv), each once, and
    the user's own files that they name (bag.jpg, shoe.jpg, chat.json, the my-data folder) made from the sample set.
    Each command must succeed, and no file an earlier command wrote may be changed or deleted by a later, different
    command (rerunning a command's own output, such as evaluate's ADAPTER/eval, is allowed)."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    lines = documented_commands(clone)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": ""}
    env.pop("VIRTUAL_ENV", None)

    def users_own_files():
        import csv

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
        # my-data: an image folder with metadata.csv (file_name, question, answer), as the README shows it
        folder = clone / "my-data"
        folder.mkdir()
        rows = list(csv.DictReader((clone / "data/sample/burberry.csv").open()))[:60]
        with (folder / "metadata.csv").open("w", newline="") as table:
            writer = csv.writer(table)
            writer.writerow(["file_name", "question", "answer"])
            for row in rows:
                name = Path(row["local_image_path"]).name
                Image.open(sample / name).convert("RGB").save(folder / name.replace(".png", ".jpg"))
                writer.writerow([name.replace(".png", ".jpg"), "What kind of product is this?", row["category3_code"]])

    written_by: dict[str, str] = {}  # file -> the command that last wrote it
    before = files_under(clone)
    ran, skipped = [], []
    for line in lines:
        reason = next((why for pattern, why in NOT_RUN_HERE.items() if re.search(pattern, line)), None)
        if reason:
            skipped.append(f"{line}  <- {reason}")
            continue
        if any(name in line for name in ("bag.jpg", "chat.json", "my-data")):
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
    assert ran[0] == "make demo" and len(ran) >= 20
    assert (clone / "outputs/demo/model.safetensors").exists() and (clone / "outputs/demo-100").is_dir()
