"""The front door as a new user meets it: the `phi3v-recipe` command, one-line errors that say what happened, a help
that answers at once, the demo that visibly learns, and the model card."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .test_train import ROOT, clean_env

CLI = str(Path(sys.executable).parent / "phi3v-recipe")


def run(args, env, cwd=ROOT, timeout=300, command=(CLI,)):
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def first_error(result) -> str:
    """The one `error:` line, with no traceback and exit status 2 (or make's 2)."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


@pytest.fixture()
def env(tmp_path):
    return clean_env(tmp_path)


def test_help_answers_at_once_and_lists_config_first_then_grouped_keys(env):
    for args in (
        ["--help"],
        ["train", "--help"],
        ["predict", "--help"],
        ["push", "--help"],
        ["sample-data", "--help"],
        ["plan", "--help"],
        ["plan", "--config", "recipes/burberry_lora.yaml", "--gpu", "B300"],  # its flag mistakes answer at once too
    ):
        result = run(args, env, command=(sys.executable, "-X", "importtime", CLI))
        assert result.returncode == (2 if "B300" in args else 0), result.stderr
        imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "import time:" in line}
        assert not imported & {"torch", "transformers", "datasets"}, args  # so it answers at once, busy or not
    overview = run(["--help"], env).stdout
    for command in ("train", "plan", "evaluate", "predict", "app", "push", "download", "sample-data", "tiny", "bench"):
        assert f"  {command} " in overview
    text = run(["train", "--help"], env).stdout
    sections = ["--config RECIPE.yaml", "phi3v-recipe's own keys", "Most used training keys", "Most used model keys"]
    positions = [text.index(section) for section in sections]
    assert positions == sorted(positions)
    for key in ("--dataset ", "--answer_template", "--learning_rate", "--lora_r", "--help-all"):
        assert key in text
    full = run(["train", "--help-all"], env).stdout
    assert "--gradient_accumulation_steps" in full and "--adam_beta2" in full


def test_make_train_names_the_missing_recipe_and_lists_them(env):
    make = ["make", "-s", "--no-print-directory"]
    missing = run(["train", "RECIPE=does_not_exist"], env, command=make)
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: recipes/does_not_exist.yaml does not exist. Recipes: ")
    assert "burberry_lora" in missing.stderr and "demo" in missing.stderr and "Traceback" not in missing.stderr
    bare = run(["train"], env, command=make)
    assert bare.returncode == 2 and bare.stderr.startswith("error: say which recipe: make train RECIPE=<name>.")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_recipe_on_a_machine_without_one_says_the_way_out(env):
    line = first_error(run(["train", "--config", "recipes/burberry_lora.yaml"], env))
    assert line == (
        "error: recipes/burberry_lora.yaml trains in bf16 on a GPU, and this machine has none. Use "
        "recipes/demo.yaml (make demo), or run it on the CPU (slowly) with --use_cpu true --bf16 false."
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_run_without_bf16_is_caught_the_same_way(env):
    line = first_error(run(["train", "--config", "recipes/demo.yaml", "--use_cpu", "false", "--bf16", "false"], env))
    assert line == (
        "error: recipes/demo.yaml trains on a GPU, and this machine has none. Use recipes/demo.yaml (make demo), or "
        "run it on the CPU (slowly) with --use_cpu true --bf16 false."
    )


@pytest.mark.parametrize("offline", [True, False])
def test_an_uncached_model_without_the_hub_fails_in_seconds_and_names_it(tmp_path, offline):
    unreachable = {"HF_HUB_OFFLINE": "1"} if offline else {"HF_ENDPOINT": "http://127.0.0.1:9"}
    env = clean_env(tmp_path, **unreachable)
    args = ["train", "--config", "recipes/demo.yaml", "--model_name_or_path", "someone/not-cached"]
    # Not minutes of retries: the wait is bounded generously (30 s failed at a load of 15-20 on 2 cores), so only a
    # retry loop or a hang fails it.
    line = first_error(run([*args, "--output_dir", str(tmp_path / "out")], env, timeout=150))
    assert line.startswith(
        "error: The model 'someone/not-cached' is not a local folder and not in the Hugging Face cache ("
    )
    assert ("HF_HUB_OFFLINE=1" if offline else "ConnectError") in line and "hf download someone/not-cached" in line


def test_predict_with_an_unreachable_hub_says_so(tmp_path):
    image = tmp_path / "bag.png"
    from .test_processor import photo

    photo(40, 30).save(image)
    env = clean_env(tmp_path, HF_ENDPOINT="http://127.0.0.1:9")
    line = first_error(run(["predict", "--adapter", "someone/an-adapter", "--image", str(image)], env))
    assert "not in the Hugging Face cache" in line and "the Hub cannot be reached" in line


@pytest.fixture()
def finished_run(tmp_path):
    """An output folder as far as `push` looks: it holds adapter weights."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"")
    return str(folder)


def test_push_without_a_token_says_what_to_do(tmp_path, finished_run):
    line = first_error(run(["push", finished_run, "--repo_id", "me/x"], clean_env(tmp_path)))
    assert line == (
        "error: No Hugging Face token was found, so nothing can be pushed to me/x. Run `hf auth login`, or export "
        "HF_TOKEN with a write token (docker: -e HF_TOKEN)."
    )


def test_push_names_its_own_flag_and_takes_no_abbreviation(tmp_path, finished_run):
    line = first_error(run(["push", finished_run, "--repo_id", "your-username/x"], clean_env(tmp_path)))
    assert line == (
        "error: repo_id='your-username/x' is a placeholder or not a Hub repo id (owner/name). "
        "Pass --repo_id your-hf-name/repo-name."
    )
    line = first_error(run(["push", finished_run, "--repo", "me/x"], clean_env(tmp_path)))
    assert line == "error: the following arguments are required: --repo_id (see phi3v-recipe push --help)."


def test_evaluate_before_training_says_to_train(tmp_path, tiny_dir):
    args = ["evaluate", "--config", "recipes/demo.yaml", "--model_name_or_path", str(tiny_dir)]
    line = first_error(run([*args, "--output_dir", str(tmp_path / "never")], clean_env(tmp_path)))
    assert line.startswith(
        f"error: {tmp_path / 'never'} (the recipe's output_dir) does not exist: this recipe has not"
    )
    assert "phi3v-recipe train --config recipes/demo.yaml" in line


def test_debug_shows_the_traceback(tmp_path):
    result = run(["train", "--config", "recipes/nope.yaml", "--debug"], clean_env(tmp_path))
    assert result.returncode != 0 and "Traceback" in result.stderr and "UserError" in result.stderr


def test_unknown_command_is_one_line(env):
    result = run(["trian"], env)
    assert result.returncode == 2 and result.stderr.startswith("error: unknown command 'trian'. Did you mean train?")


def test_the_model_card_has_no_placeholder_and_no_empty_cell(tmp_path):
    from phi3v_recipe.arguments import RecipeArguments
    from phi3v_recipe.hub import write_model_card

    recipe = RecipeArguments(data_format="template")
    metrics = {"eval_loss": 0.5, "eval_full_price_mae": None, "eval_parse_rate": 1.0}
    (tmp_path / "a").mkdir()
    base = "microsoft/Phi-3-vision-128k-instruct"
    card = write_model_card(tmp_path / "a", base, "recipes/x.yaml", recipe, metrics, "me/x", True).read_text()
    assert "base_model: microsoft/Phi-3-vision-128k-instruct" in card
    assert "(https://huggingface.co/microsoft/Phi-3-vision-128k-instruct)" in card and "library_name: peft" in card
    assert "None" not in card and "eval_full_price_mae" not in card and "| eval_parse_rate | 1 |" in card
    assert "pip install phi3v-recipe" not in card and "github.com/)" not in card and "is not on PyPI" in card
    (tmp_path / "b").mkdir()
    (tmp_path / "outputs" / "tiny-phi3v").mkdir(parents=True)  # a local base model is a folder that exists
    base = str(tmp_path / "outputs" / "tiny-phi3v")
    local = write_model_card(tmp_path / "b", base, "recipes/demo.yaml", recipe, {}, "outputs/demo", False).read_text()
    assert "base_model:" not in local and "huggingface.co/" not in local and f"`{base}`" in local
    assert "library_name: transformers" in local and "PeftModel" not in local
    assert "No evaluation was run." in local


@pytest.mark.slow  # 2+ minutes of training: make test-all runs it
def test_the_demo_ends_with_answers_that_parse_and_beat_a_baseline(tiny_dir, tmp_path):
    """`make demo`'s recipe as shipped: full fine-tuning of the tiny model on the synthetic set (about 100 s)."""
    from phi3v_recipe.synthetic import write_sample_set
    from phi3v_recipe.train import main

    csv_path = write_sample_set(tmp_path / "sample", rows=1200, seed=0)
    out = tmp_path / "demo"
    args = ["--config", str(ROOT / "recipes/demo.yaml"), "--model_name_or_path", str(tiny_dir)]
    main([*args, "--dataset", str(csv_path), "--output_dir", str(out), "--report_to", "none"])
    metrics = json.loads((out / "metrics.json").read_text())
    print({k: v for k, v in metrics.items() if k.startswith(("eval_", "baseline_"))})
    assert metrics["eval_parse_rate"] > 0.9
    assert metrics["eval_title_token_f1"] > metrics["baseline_title_token_f1"] + 0.1
    answers = [json.loads(line)["prediction"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert not any("<|unused" in answer for answer in answers)
    assert (out / "plots" / "category3_code.png").is_file() and (out / "plots" / "full_price.png").is_file()


@pytest.mark.parametrize(
    ("command", "prog"),
    [
        ((CLI, "bench"), "phi3v-recipe bench"),
        ((sys.executable, "-m", "phi3v_recipe.bench"), "python -m phi3v_recipe.bench"),
        ((sys.executable, "-m", "phi3v_recipe.synthetic"), "python -m phi3v_recipe.synthetic"),
    ],
)
def test_a_flag_error_names_the_command_as_it_was_typed(env, command, prog):
    result = run(["--rows", "two"], env, command=command)
    assert first_error(result) == f"error: argument --rows: invalid int value: 'two' (see {prog} --help)."


@pytest.mark.parametrize(
    "recipe",
    # A GRPO smoke run samples 8 answers of 64 tokens a photo: ~40 s here, so one GRPO recipe runs by default.
    ["burberry_qlora", "phi4mm_docvqa_lora", "docvqa_grpo", pytest.param("burberry_grpo", marks=pytest.mark.slow)],
)
def test_a_smoke_run_takes_two_steps_of_a_gpu_recipe_on_its_tiny_model_and_twin_data(
    recipe, tiny_dir, tiny4_dir, tmp_path, env
):
    """The recipe's own model, LoRA, quantization, crop and checkpointing settings; the tiny model of its family and
    the synthetic set of its task; 2 steps on the CPU, no scored evaluation (it took minutes in a 2-step run)."""
    import yaml

    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "tiny-phi3v").symlink_to(tiny_dir)
    (tmp_path / "outputs" / "tiny-phi4mm").symlink_to(tiny4_dir)
    task = "docvqa" if "docvqa" in recipe else "burberry"
    sample = ["--task", task, "--rows", "60", "--out", f"data/sample{'/docvqa' if task == 'docvqa' else ''}"]
    subprocess.run([sys.executable, "-m", "phi3v_recipe.synthetic", *sample], cwd=tmp_path, env=env, check=True)
    result = run(["smoke", "--config", str(ROOT / "recipes" / f"{recipe}.yaml")], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ran = yaml.safe_load((tmp_path / "outputs" / "smoke" / f"{recipe}.yaml").read_text())
    shipped = yaml.safe_load((ROOT / "recipes" / f"{recipe}.yaml").read_text())
    kept = ("use_peft", "load_in_4bit", "num_crops", "dynamic_hd", "activation_checkpointing", "lora_r", "stage")
    for key in kept + ("num_generations", "max_completion_length", "rewards"):
        if key == "use_peft" and shipped.get("sft_adapter"):  # a new LoRA stands in for the real model's adapter
            assert ran["use_peft"] is True and ran["sft_adapter"] is None
            continue
        assert ran.get(key) == shipped.get(key), key
    family = "phi4mm" if recipe.startswith("phi4mm") else "phi3v"
    assert ran["model_name_or_path"] == f"outputs/tiny-{family}" and ran["dataset"].startswith("data/sample/")
    assert ran["max_steps"] == 2 and ran["scored_evaluation"] is False
    out = tmp_path / "outputs" / "smoke" / recipe
    metrics = json.loads((out / "metrics.json").read_text())
    assert round(metrics["train_steps_per_second"] * metrics["train_runtime"]) == 2
    assert not any(key.startswith("baseline_") for key in metrics)  # the scored evaluation adds baseline_*
    assert (out / "adapter_model.safetensors").is_file() and "Scored evaluation" not in result.stdout


@pytest.mark.parametrize(
    ("entry", "mistake", "said"),
    [
        (
            ["-m", "phi3v_recipe.train"],
            ["--config", "recipes/demo.yaml", "--learning_r", "1"],
            "Unknown flag --learning_r",
        ),
        ([CLI, "train"], ["--config", "recipes/dmeo.yaml"], "Did you mean recipes/demo.yaml?"),
        (
            [CLI, "launch", "--num_processes", "1"],
            ["--config", "recipes/demo.yaml", "--max_stepz", "2"],
            "--max_steps?",
        ),
        ([CLI, "smoke"], ["--config", "recipes/demo.yaml", "--hub_token", "x"], "--hub_token puts the token"),
        (["-m", "phi3v_recipe.prepare"], ["--config", "{bad}"], "Unknown key 'learnin_rate'"),
        ([CLI, "train"], ["--config", "recipes/demo.yaml", "--max_steps", "many"], "max_steps must be a whole number"),
        ([CLI, "train"], ["--config", "{bad_dtype}"], "dtype='bfloat61' in"),
        (
            ["-m", "phi3v_recipe.train"],
            ["--config", "recipes/demo.yaml", "--lr_scheduler_type", "cosin"],
            "Did you mean 'cosine'?",
        ),
        ([CLI, "smoke"], ["--config", "recipes/demo.yaml", "--learning_rate", "-1"], "learning_rate must be positive"),
        ([CLI, "launch"], ["--config", "recipes/demo.yaml", "--max_steps"], "--max_steps needs a value"),
        ([CLI, "evaluate"], ["--config", "recipes/demo.yaml", "--max_sample", "3"], "Did you mean --max_samples?"),
        ([CLI, "evaluate"], ["--config", "recipes/dmeo.yaml"], "Did you mean recipes/demo.yaml?"),
        ([CLI, "predict"], ["--adapter", "outputs/demo", "--image", "no-such.png"], "--image no-such.png: no such"),
        ([CLI, "predict"], ["--adapter", "{missing}", "--image", "{image}"], "no-such-run' is not a folder"),
        ([CLI, "app"], ["--adapter", "{missing}"], "no-such-run' is not a folder"),
        (["-m", "phi3v_recipe.predict"], ["--adapter", "{missing}", "--image", "{image}"], "is not a folder"),
        (["-m", "phi3v_recipe.evaluate"], ["--config", "recipes/demo.yaml", "--max_sample", "3"], "--max_samples?"),
    ],
)
def test_a_recipe_or_flag_mistake_is_said_before_torch_transformers_or_trl_are_imported(
    entry, mistake, said, env, tmp_path
):
    """They were imported first (25-47 s to an error on a loaded machine); `make bench-errors` times it."""
    from phi3v_recipe.config import known_keys

    known_keys()  # the key list the precheck reads, as make setup writes it
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: outputs/tiny-phi3v\nlearnin_rate: 1.0e-4\n")
    bad_dtype = tmp_path / "bad_dtype.yaml"
    bad_dtype.write_text((ROOT / "recipes/demo.yaml").read_text().replace("dtype: float32", "dtype: bfloat61"))
    command = [sys.executable, "-X", "importtime", *entry]
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "photo.png")
    places = {"bad": bad, "bad_dtype": bad_dtype, "missing": tmp_path / "no-such-run", "image": tmp_path / "photo.png"}
    command += [arg.format(**places) for arg in mistake]
    done = run([], env, command=command)
    line = first_error(done)
    assert said in line, line
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"torch", "transformers", "trl", "accelerate", "datasets"}, imported & {"torch", "trl"}


def test_make_train_with_a_misspelled_recipe_answers_before_building_anything(tmp_path, env):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    shutil.copy(ROOT / "Makefile", clone / "Makefile")  # as in the working tree
    line = first_error(run(["train", "RECIPE=burbery_lora"], env, cwd=clone, command=("make",)))
    assert line.startswith("error: recipes/burbery_lora.yaml does not exist. Did you mean burberry_lora?")
    assert not (clone / ".venv").exists()


def test_the_precheck_passes_every_shipped_recipe_and_the_usual_flags():
    """Values the full parse takes pass the precheck: each recipe file as it is, and the flags the docs use (a bare
    boolean flag, lists, null for our optional keys, negative and float numbers where they are allowed)."""
    from phi3v_recipe.config import known_keys
    from phi3v_recipe.recipe_file import precheck

    known_keys()
    for recipe in sorted((ROOT / "recipes").glob("*.yaml")):
        precheck(["--config", str(recipe)])
    flags = [
        "--bf16", "--max_steps", "3", "--use_peft", "true", "--lora_target_modules", "q_proj", "k_proj",
        "--image_column", "null", "--numeric_fields", "null", "--report_to", "none", "--warmup_steps", "0.1",
        "--learning_rate=2e-5", "--eval_strategy", "no", "--max_length", "512", "--seed", "-1",
    ]  # fmt: skip
    precheck(["--config", str(ROOT / "recipes/demo.yaml"), *flags])
