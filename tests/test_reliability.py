"""Hostile use: secrets never written, runs never lost or mixed, checkpoints complete or absent, bad recipes and
flags caught before loading, broken adapters and images named, pushes checked before training."""

import json
import shutil
import subprocess
import sys
import textwrap
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import datasets
import pytest
import yaml

from phi3v_recipe.config import parse_recipe
from phi3v_recipe.data import DataArguments, prepare_data
from phi3v_recipe.errors import UserError
from phi3v_recipe.hub import PUSH_IGNORE
from phi3v_recipe.runs import checkpoint_problems

from .test_processor import photo
from .test_train import ROOT, clean_env, demo_args, run_module, run_train


@pytest.fixture(scope="module")
def sample_csv(tmp_path_factory):
    from phi3v_recipe.synthetic import write_sample_set

    return write_sample_set(tmp_path_factory.mktemp("sample"), rows=24, seed=4)


def error_line(result) -> str:
    """The single `error:` line of a failed command (and no traceback)."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return line


# ---------- 1. secrets ----------
def files_under(folder: Path):
    return [p for p in folder.rglob("*") if p.is_file()]


def would_upload(folder: Path) -> list[Path]:
    from huggingface_hub.utils import filter_repo_objects

    relative = [p.relative_to(folder).as_posix() for p in files_under(folder)]
    return [folder / p for p in filter_repo_objects(relative, ignore_patterns=PUSH_IGNORE)]


def test_no_token_is_written_anywhere_whatever_the_route(tiny_dir, sample_csv, tmp_path):
    tokens = {"env": "hf_PLANTED_env_1111", "recipe": "hf_PLANTED_recipe_2222"}
    recipe = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    recipe["hub_token"] = tokens["recipe"]
    recipe_file = tmp_path / "with_token.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    args = demo_args(tiny_dir, sample_csv, out, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1")
    args[1] = str(recipe_file)
    args += ["--report_to", "wandb", "--eval_fraction", "0.2", "--eval_strategy", "steps", "--eval_steps", "2"]
    args += ["--push_to_hub", "true", "--hub_model_id", "someone/phi3v-test"]
    home = tmp_path / "home"
    env = clean_env(home, HF_TOKEN=tokens["env"], HF_ENDPOINT="http://127.0.0.1:9", WANDB_MODE="offline")
    result = run_train(args, env)
    line = error_line(result)  # trained, then the upload was refused
    assert line.startswith("error: Push to someone/phi3v-test failed")
    assert (out / "adapter_model.safetensors").is_file() and list(out.glob("checkpoint-*"))
    assert list((out / "wandb").glob("offline-run-*"))

    written = files_under(out) + files_under(home)
    assert len(written) > 20
    for path in written:
        data = path.read_bytes()
        for route, token in tokens.items():
            assert token.encode() not in data, f"the {route} token is in {path}"
    assert result.stdout.count("hf_PLANTED") == result.stderr.count("hf_PLANTED") == 0
    uploaded = {p.name for p in would_upload(out)}
    assert "adapter_model.safetensors" in uploaded and "training_args.bin" not in uploaded
    assert not any(name.endswith((".pt", ".pth", ".bin")) for name in uploaded)


@pytest.mark.parametrize("flag", [["--hub_token", "hf_PLANTED"], ["--hub_token=hf_PLANTED"]])
def test_a_token_on_the_command_line_is_refused_before_anything_starts(tiny_dir, sample_csv, tmp_path, flag):
    """A flag's value is in the command line of the run and of every DataLoader worker (ps, for every local user):
    refused in one line that says how to give it instead, before any worker or any file."""
    out = tmp_path / "out"
    result = run_train([*demo_args(tiny_dir, sample_csv, out), *flag], clean_env(tmp_path))
    assert error_line(result).startswith("error: --hub_token puts the token in the command line")
    assert "HF_TOKEN=" in result.stderr and "hf_PLANTED" not in result.stdout + result.stderr
    assert not out.exists()


# ---------- 2. runs are never lost or mixed ----------
def digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in files_under(folder)}


def test_a_fresh_run_never_overwrites_another_and_resume_checks_the_recipe(tiny_dir, sample_csv, tmp_path):
    out = tmp_path / "out"
    env = clean_env(tmp_path)
    common = ["--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2"]
    first = run_train(demo_args(tiny_dir, sample_csv, out, *common), env)
    assert first.returncode == 0, first.stderr[-3000:]
    before = digest(out)

    again = run_train(demo_args(tiny_dir, sample_csv, out, *common), env)
    assert "already holds a run" in error_line(again) and "--overwrite_output_dir true" in error_line(again)
    assert digest(out) == before  # nothing touched

    changed = run_train(
        demo_args(tiny_dir, sample_csv, out, *common, "--learning_rate", "1e-4", "--resume_from_checkpoint", "true"),
        env,
    )
    assert "learning_rate: 0.005 -> 0.0001" in error_line(changed)
    assert digest(out) == before

    fresh = run_train(demo_args(tiny_dir, sample_csv, out, *common, "--overwrite_output_dir", "true"), env)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "Deleting the previous run" in fresh.stdout


def test_resume_auto_starts_a_fresh_folder_resumes_a_checkpointed_one_and_continues_its_wandb_run(
    tiny_dir, sample_csv, tmp_path
):
    """What a requeued SLURM job or a recovered SkyPilot job runs: the same command, each time."""
    out = tmp_path / "out"
    env = clean_env(tmp_path, WANDB_MODE="offline")
    common = [
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--report_to",
        "wandb",
        "--resume_from_checkpoint",
        "auto",
    ]
    first = run_train(demo_args(tiny_dir, sample_csv, out, *common, "--max_steps", "2"), env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"No complete checkpoint in {out} to resume from (resume_from_checkpoint: auto): starting" in first.stdout
    run_id = (out / "wandb" / "run-id").read_text()
    again = run_train(demo_args(tiny_dir, sample_csv, out, *common, "--max_steps", "4"), env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Resuming from {out / 'checkpoint-2'} (the newest complete checkpoint)" in again.stdout
    runs = sorted(path.name for path in (out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(name.endswith(f"-{run_id}") for name in runs), (runs, run_id)
    fresh = run_train(demo_args(tiny_dir, sample_csv, tmp_path / "other", *common[:-2], "--max_steps", "2"), env)
    assert fresh.returncode == 0 and (tmp_path / "other/wandb/run-id").read_text() != run_id


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    point, step = os.environ["KILL_AT"], f"checkpoint-{os.environ['KILL_STEP']}"

    def die_at(module, name, path_of):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            if step in str(path_of(*args, **kwargs)):
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)

        setattr(module, name, wrapper)

    import peft.peft_model, torch, transformers.trainer_callback as tc
    if point == "weights":  # the adapter's safetensors, as PEFT writes them
        die_at(peft.peft_model, "safe_save_file", lambda tensors, filename, *a, **k: filename)
    elif point == "optimizer":
        die_at(torch, "save", lambda obj, f, *a, **k: f)
    elif point == "state":
        die_at(tc.TrainerState, "save_to_json", lambda self, path: path)
    from phi3v_recipe.errors import run
    from phi3v_recipe.train import main
    run(main, sys.argv[1:])
    """
)


def test_a_kill_during_a_save_leaves_complete_checkpoints_and_resume_says_which(tiny_dir, sample_csv, tmp_path):
    driver = tmp_path / "killer.py"
    driver.write_text(KILLER)
    common = ["--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "5"]
    for point in ("weights", "optimizer", "state"):
        out = tmp_path / point
        env = clean_env(tmp_path, KILL_AT=point, KILL_STEP="4", PYTHONPATH=str(ROOT))
        result = subprocess.run(
            [sys.executable, str(driver), *demo_args(tiny_dir, sample_csv, out, *common)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == -9, (point, result.stderr[-2000:])
        assert (out / "checkpoint-2" / "trainer_state.json").is_file(), point
        assert not (out / "checkpoint-4").exists(), f"a partial checkpoint-4 is in place after a kill at {point}"

    # An older tool's partial folder, too: resume passes it over and says why.
    out = tmp_path / "state"
    partial = out / "checkpoint-3"
    shutil.copytree(out / "checkpoint-2", partial)
    (partial / "optimizer.pt").unlink()
    resumed = run_train(
        demo_args(tiny_dir, sample_csv, out, *common, "--resume_from_checkpoint", "true"), clean_env(tmp_path)
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Removing an unfinished checkpoint save" in resumed.stdout
    assert f"Skipping {partial}: incomplete (no optimizer.pt)" in resumed.stdout
    assert f"Resuming from {out / 'checkpoint-2'} (the newest complete checkpoint)" in resumed.stdout
    assert (out / "checkpoint-6" / "trainer_state.json").is_file()

    # A newest checkpoint whose files are there but cut short (a copy, a disk): each kind of file is found out by its
    # header alone ...
    for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        cut = tmp_path / f"cut-{name}" / "checkpoint-6"
        shutil.copytree(out / "checkpoint-6", cut)
        data = (cut / name).read_bytes()
        (cut / name).write_bytes(data[: len(data) * 2 // 3])
        assert any(name in problem for problem in checkpoint_problems(cut)), name
    assert checkpoint_problems(out / "checkpoint-6") == []
    # ... moved aside with one line, and the run resumes from the complete one before it.
    shutil.copytree(tmp_path / "cut-adapter_model.safetensors" / "checkpoint-6", out / "checkpoint-8")
    resumed = run_train(
        demo_args(tiny_dir, sample_csv, out, *common, "--resume_from_checkpoint", "true", "--max_steps", "8"),
        clean_env(tmp_path),
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (
        f"Moved {out / 'checkpoint-8'} aside to {out / 'damaged-checkpoint-8'}: damaged (adapter_model.safetensors"
        in (resumed.stdout)
    )
    assert f"Resuming from {out / 'checkpoint-6'} (the newest complete checkpoint)" in resumed.stdout
    assert checkpoint_problems(out / "checkpoint-8") == []


def test_a_full_disk_is_one_line_and_keeps_what_was_saved(tiny_dir, sample_csv, tmp_path):
    disk = tmp_path / "small-disk"
    disk.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3600k", "tmpfs", str(disk)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = disk / "out"
        common = ["--max_steps", "8", "--save_strategy", "steps", "--save_steps", "1", "--save_total_limit", "20"]
        result = run_train(demo_args(tiny_dir, sample_csv, out, *common), clean_env(tmp_path))
        line = error_line(result)
        assert line.startswith(f"error: No space left on the disk of {out} while saving")
        complete = [p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
        assert complete and all((p / "optimizer.pt").is_file() for p in complete)  # whole, or not there
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ---------- 4. recipes and the command line ----------
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"use_peft": True, "lora_r": 0}, "lora_r must be at least 1, got 0"),
        ({"dtype": "bfloat61"}, "dtype='bfloat61' is not one of auto, bfloat16, float16, float32"),
        ({"report_to": ["wandbb"]}, "report_to: 'wandbb' is not a logging integration. Did you mean 'wandb'?"),
        ({"max_rows": -5}, "max_rows must be at least 1"),
        ({"model_name_or_path": "./no/such/model"}, "model_name_or_path='./no/such/model': no such folder"),
        ({"learning_r": 1e-4}, "Unknown key 'learning_r' in .*Did you mean 'learning_rate'"),
        ({"num_train_epochs": -1, "max_steps": -1}, "the run would train 0 steps"),
        ({"num_crops": 32}, "num_crops must be between 1 and 16"),
        ({"metric": "accuracy"}, "metric: accuracy needs labels"),
    ],
)
def test_bad_recipe_values_are_named_before_anything_loads(tmp_path, changes, message):
    recipe = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text()) | changes
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(UserError, match=message):
        parse_recipe(["--config", str(path)])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config"], "--config needs a recipe file"),
        (["--config", "--max_steps", "3"], "--config needs a recipe file"),
        (["--config", "recipes/nope.yaml"], r"Recipe recipes/nope.yaml does not exist. Recipes: .*demo"),
        (
            ["--config", "recipes/dmeo.yaml"],
            r"Recipe recipes/dmeo.yaml does not exist. Did you mean recipes/demo.yaml\?",
        ),
        (
            ["--config", "recipes/demo.yaml", "--learning_r", "1e-4"],
            "Unknown flag --learning_r. Did you mean --learning_rate",
        ),
        (
            ["--config", "recipes/demo.yaml", "--max_steps", "many"],
            "argument --max_steps.*: invalid int value: 'many'",
        ),
    ],
)
def test_bad_flags_are_one_line(argv, message, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(UserError, match=message):
        parse_recipe(argv)


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model_name_or_path: outputs/tiny-phi3v\nlearning_rate: [1e-4\nmax_steps: 3\n")
    with pytest.raises(UserError, match=rf"{path}:3:10: YAML syntax error"):
        parse_recipe(["--config", str(path)])


def test_a_bad_recipe_fails_at_once_as_one_line(tmp_path):
    args = ["--config", "recipes/demo.yaml", "--use_peft", "true", "--lora_r", "0"]
    result = run_module("train", args, clean_env(tmp_path), timeout=150)  # a hang fails the test, not CI
    assert error_line(result) == "error: lora_r must be at least 1, got 0."
    assert "Data:" not in result.stdout and "Loading weights" not in result.stderr  # parsing only: no data, no model


# ---------- 6. inference and the Hub ----------
@pytest.fixture(scope="module")
def adapter_dir(tiny_dir, sample_csv, tmp_path_factory):
    from phi3v_recipe.train import main

    out = tmp_path_factory.mktemp("adapter") / "out"
    main(demo_args(tiny_dir, sample_csv, out, "--max_steps", "1", "--eval_fraction", "0"))
    return out


def predict(args, tmp_path, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "phi3v_recipe.predict", *args],
        cwd=cwd,
        env=clean_env(tmp_path, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_broken_adapters_and_images_are_named(adapter_dir, tmp_path):
    image = tmp_path / "bag.png"
    photo(64, 48).save(image)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(adapter_dir, corrupt)
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x00" * 100)
    missing = tmp_path / "missing"
    shutil.copytree(adapter_dir, missing)
    (missing / "adapter_model.safetensors").unlink()
    cases = [
        (
            ["--adapter", str(corrupt), "--image", str(image)],
            f"{corrupt / 'adapter_model.safetensors'} is not a readable safetensors file",
        ),
        (["--adapter", str(missing), "--image", str(image)], f"{missing / 'adapter_model.safetensors'} is missing"),
        (
            ["--adapter", str(adapter_dir), "--image", str(not_an_image)],
            f"--image {not_an_image}: not a readable image",
        ),
        (["--adapter", str(adapter_dir), "--image", str(tmp_path / "nope.png")], "no such file"),
        (["--adapter", str(tmp_path / "no-such-folder"), "--image", str(image)], "is not a folder"),
    ]
    for args, message in cases:
        assert message in error_line(predict(args, tmp_path)), args


def test_push_of_a_folder_without_an_adapter_says_so(tmp_path):
    result = run_module("hub", ["push", str(tmp_path / "nothing"), "--repo_id", "me/x"], clean_env(tmp_path))
    assert (
        error_line(result)
        == f"error: {tmp_path / 'nothing'} does not exist: nothing to push. Give the output_dir of a finished training run."
    )


def test_a_local_base_is_found_from_another_folder_and_a_mismatch_is_a_warning(adapter_dir, tiny_dir, tmp_path):
    recorded = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(recorded).is_absolute() and Path(recorded) == Path(tiny_dir).resolve()
    image = tmp_path / "bag.png"
    photo(64, 48).save(image)
    elsewhere = predict(
        ["--adapter", str(adapter_dir), "--image", str(image), "--max_new_tokens", "2"], tmp_path, cwd=tmp_path
    )
    assert elsewhere.returncode == 0, elsewhere.stderr[-2000:]
    other = tmp_path / "other-base"
    shutil.copytree(tiny_dir, other)
    mismatch = predict(
        ["--adapter", str(adapter_dir), "--base", str(other), "--image", str(image), "--max_new_tokens", "2"], tmp_path
    )
    assert mismatch.returncode == 0, mismatch.stderr[-2000:]
    assert f"Warning: the adapter was trained on {recorded!r}; applying it to {str(other)!r}" in mismatch.stdout


# ---------- 7. every source checks its rows the same way ----------
def test_corrupt_images_in_an_image_folder_and_an_image_column_are_counted_skips(tiny_dir, tmp_path):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_dir)
    folder = tmp_path / "folder"
    folder.mkdir()
    photo(60, 40).save(folder / "good.png")
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "metadata.csv").write_text("file_name,title\ngood.png,good\nbad.png,bad\n")
    common = dict(answer_template="{title}", numeric_fields=[], eval_fraction=0, id_column="title")
    data = prepare_data(
        DataArguments(dataset=str(folder), image_cache_dir=str(tmp_path / "c1"), **common), processor, None
    )
    assert data.train["title"] == ["good"] and [(k, e.kind) for _, k, e in data.skipped] == [
        ("bad", "unreadable image")
    ]

    good = (folder / "good.png").read_bytes()
    table = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": good, "path": "a.png"}, {"bytes": b"\xff\xd8 broken", "path": "b.jpg"}],
            "title": ["a", "b"],
        }
    )
    table.cast_column("image", datasets.Image()).to_parquet(tmp_path / "hub.parquet")
    data = prepare_data(
        DataArguments(dataset=str(tmp_path / "hub.parquet"), image_cache_dir=str(tmp_path / "c2"), **common),
        processor,
        None,
    )
    assert data.train["title"] == ["a"] and [(k, e.kind) for _, k, e in data.skipped] == [("b", "unreadable image")]


@pytest.mark.parametrize("name", ["data/nowhere.parquet", "data/nowhere.csv", "./nowhere", "some/deep/path/data.tsv"])
def test_a_missing_local_path_is_one_error_not_a_hub_lookup(name, tiny_dir, monkeypatch):
    from transformers import AutoProcessor

    from phi3v_recipe.data import sources

    def no_hub(*args, **kwargs):
        raise AssertionError("a local-looking path was looked up on the Hub")

    monkeypatch.setattr(sources, "load_hub_dataset", no_hub)
    with pytest.raises(UserError, match=f"dataset={name!r} does not exist"):
        prepare_data(DataArguments(dataset=name), AutoProcessor.from_pretrained(tiny_dir), None)


def test_a_template_field_that_is_no_column_is_one_error(tiny_dir, sample_csv):
    from transformers import AutoProcessor

    args = DataArguments(dataset=str(sample_csv), answer_template="{title} costs {prize}", numeric_fields=[])
    with pytest.raises(UserError, match=r"no column 'prize'; its columns are \['product_code'"):
        prepare_data(args, AutoProcessor.from_pretrained(tiny_dir), None)


# ---------- 8. pushes that cannot succeed are caught before training ----------
class FakeHub:
    """/api/whoami-v2 of a Hub on 127.0.0.1: the answer each token gets."""

    def __init__(self):
        answers = {
            "Bearer hf_good": (
                200,
                {"name": "alice", "orgs": [{"name": "team"}], "auth": {"accessToken": {"role": "write"}}},
            ),
            "Bearer hf_read": (200, {"name": "alice", "orgs": [], "auth": {"accessToken": {"role": "read"}}}),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self):
                self.send_response(200)
                self.end_headers()

            def do_GET(self):
                status, body = answers.get(self.headers.get("authorization"), (401, {"error": "Invalid credentials"}))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture()
def fake_hub(monkeypatch):
    import huggingface_hub.constants

    from phi3v_recipe import hub

    server = FakeHub()
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", server.url)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    hub.hub_unreachable.cache_clear()
    yield server
    hub.hub_unreachable.cache_clear()
    server.httpd.shutdown()


@pytest.mark.parametrize(
    ("repo", "token", "message"),
    [
        ("your-username/phi3v-burberry-lora", "hf_good", "is a placeholder"),
        ("not a repo id", "hf_good", "is a placeholder or not a Hub repo id"),
        ("alice/x", "hf_bad", r"not valid \(401\)"),
        ("alice/x", "hf_read", "read-only"),
        ("bob/x", "hf_good", "belongs to 'alice', who cannot write to 'bob'"),
    ],
)
def test_a_push_that_cannot_succeed_is_refused_before_anything_loads(
    fake_hub, repo, token, message, tiny_dir, sample_csv, tmp_path, monkeypatch
):
    from phi3v_recipe.hub import PushNotReady, check_push_ready
    from phi3v_recipe.train import main

    with pytest.raises(PushNotReady, match=message):
        check_push_ready(repo, token)
    monkeypatch.setattr("phi3v_recipe.train.load_model", lambda *a: pytest.fail("the model was loaded"))
    args = demo_args(tiny_dir, sample_csv, tmp_path / "out", "--push_to_hub", "true", "--hub_model_id", repo)
    monkeypatch.setenv("HF_TOKEN", token)
    with pytest.raises(PushNotReady, match=message):
        main(args)
    assert not (tmp_path / "out").exists()


def test_a_good_token_and_namespace_pass(fake_hub):
    from phi3v_recipe.hub import check_push_ready

    assert check_push_ready("alice/x", "hf_good") == "hf_good"
    assert check_push_ready("team/x", "hf_good") == "hf_good"
