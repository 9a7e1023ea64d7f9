"""What a newcomer following the README trips on: merging a full fine-tune, sample sets that never appear, a failed
run that locks its folder, an interrupted run that does not say how to resume, conversations read from another folder,
recipe keys that cannot be cleared, a help that does not answer."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from phi3v_recipe import predict
from phi3v_recipe.config import parse_recipe
from phi3v_recipe.errors import UserError
from phi3v_recipe.export import PEFT_0_11_KEYS

from .conftest import killed_after
from .test_processor import photo
from .test_train import ROOT, clean_env, demo_args


@pytest.fixture(scope="module")
def sample_csv(tmp_path_factory):
    from phi3v_recipe.synthetic import write_sample_set

    return write_sample_set(tmp_path_factory.mktemp("sample"), rows=24, seed=4)


@pytest.fixture()
def no_loading(monkeypatch):
    """Fail the test if a model is loaded: the checks must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the check")

    monkeypatch.setattr(predict, "load_for_inference", refuse)


def test_merging_a_full_fine_tune_says_there_is_nothing_to_merge(tiny_dir, tmp_path, no_loading):
    image = tmp_path / "bag.png"
    photo(64, 48).save(image)
    with pytest.raises(UserError, match="is a fully fine-tuned model, not an adapter: there is nothing to merge"):
        predict.main(["--adapter", str(tiny_dir), "--image", str(image), "--merge", str(tmp_path / "merged")])
    assert not (tmp_path / "merged").exists()


def test_a_merge_never_writes_over_other_files(tmp_path, no_loading):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    image = tmp_path / "bag.png"
    photo(64, 48).save(image)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out, message in [
        (adapter, "is not empty (it holds adapter_config.json)"),  # the adapter's own folder
        (a_file, "is a file"),
    ]:
        with pytest.raises(UserError, match=re.escape(message)):
            predict.main(["--adapter", str(adapter), "--image", str(image), "--merge", str(out)])


def test_make_sample_data_writes_every_set_it_promises(tmp_path):
    """After `sample-data --task docvqa` by hand, `make sample-data` still writes the other sets."""
    (tmp_path / "data/sample/docvqa").mkdir(parents=True)
    (tmp_path / "data/sample/docvqa/docvqa.jsonl").write_text("")
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv/.installed").write_text("")  # set-up done (newer than pyproject.toml)
    planned = subprocess.run(
        ["make", "-n", "-f", str(ROOT / "Makefile"), "sample-data"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert planned.returncode == 0, planned.stderr
    tasks = [line.split("--task ")[1].split()[0] for line in planned.stdout.splitlines() if "--task" in line]
    assert tasks == ["burberry", "nlvr2", "frames", "messages"]


@pytest.mark.parametrize(
    ("dataset", "command"),
    [
        ("data/sample/nlvr2/nlvr2.jsonl", "phi3v-recipe sample-data --task nlvr2 --out data/sample/nlvr2"),
        ("elsewhere/burberry.csv", "phi3v-recipe sample-data --task burberry --out elsewhere"),
    ],
)
def test_a_missing_sample_set_names_the_command_that_writes_it(tiny_dir, tmp_path, monkeypatch, dataset, command):
    from transformers import AutoProcessor

    from phi3v_recipe.data import DataArguments, prepare_data

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=f"Write (that|the) sample set with: {command}"):
        prepare_data(DataArguments(dataset=dataset), AutoProcessor.from_pretrained(tiny_dir), None)


def test_a_run_that_fails_on_its_data_does_not_lock_its_folder(tiny_dir, sample_csv, tmp_path):
    from phi3v_recipe.train import main

    out = tmp_path / "out"
    with pytest.raises(UserError, match="does not exist here"):
        main(demo_args(tiny_dir, sample_csv, out, "--dataset", "data/typo.csv", "--overwrite_output_dir", "false"))
    assert (out / "run_recipe.json").is_file()
    # The corrected rerun (no --overwrite_output_dir) takes the folder: it held no trained run.
    trainer = main(demo_args(tiny_dir, sample_csv, out, "--max_steps", "1", "--overwrite_output_dir", "false"))
    assert trainer.state.global_step == 1


def test_an_interrupted_run_says_how_to_resume(tiny_dir, sample_csv, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file

    from phi3v_recipe.launch import resume_command
    from phi3v_recipe.train import how_to_resume

    out = tmp_path / "out"
    out.mkdir()
    argv = ["--config", "recipes/demo.yaml", "--overwrite_output_dir", "true"]
    assert "nothing to resume; run the same command to start again" in how_to_resume(out, argv, False)
    checkpoint = out / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, checkpoint / "model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt"):
        torch.save({}, checkpoint / name)
    said = how_to_resume(out, argv, False)
    assert said.endswith(
        "python -m phi3v_recipe.train --config recipes/demo.yaml --resume_from_checkpoint true"
    )  # without the overwrite that would delete the checkpoints
    bin_dir = Path(sys.executable).parent
    assert f"\n  {bin_dir / 'accelerate'} launch [your launch flags] -m phi3v_recipe.train --config" in (
        how_to_resume(out, argv, False, 2)
    )
    # Run as the phi3v-recipe command: that command, by the path that runs it without the venv activated.
    monkeypatch.setattr(sys, "argv", ["phi3v-recipe train"])
    assert how_to_resume(out, argv, False).endswith(
        f"\n  {bin_dir / 'phi3v-recipe'} train --config recipes/demo.yaml --resume_from_checkpoint true"
    )
    # Run by make demo, make train or phi3v-recipe launch: the command they say.
    monkeypatch.setenv("PHI3V_RESUME_COMMAND", "make demo RESUME=1")
    assert how_to_resume(out, argv, False).endswith("Resume with:\n  make demo RESUME=1")
    launch = resume_command(["--config_file", "accelerate_configs/multi_gpu.yaml"], [*argv, "--max_steps", "9"])
    assert launch == (
        f"{bin_dir / 'phi3v-recipe'} launch --config_file accelerate_configs/multi_gpu.yaml --config "
        "recipes/demo.yaml --max_steps 9 --resume_from_checkpoint true"
    )


def test_the_make_targets_resume_hint_is_the_make_command_that_was_run():
    def planned(*args) -> str:
        return subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    assert "PHI3V_RESUME_COMMAND='make demo RESUME=1' " in planned("demo")
    assert """PHI3V_RESUME_COMMAND='make demo ARGS="--max_steps 5" RESUME=1' """ in planned(
        "demo", "ARGS=--max_steps 5"
    )
    assert "PHI3V_RESUME_COMMAND='make demo-phi4mm RESUME=1' " in planned("demo-phi4mm")
    train = planned("train", "RECIPE=demo", "ACCELERATE_CONFIG=accelerate_configs/multi_gpu.yaml")
    assert "PHI3V_RESUME_COMMAND='make train RECIPE=demo ACCELERATE_CONFIG=accelerate_configs/multi_gpu.yaml " in train


def start_training(args: list[str], tmp_path, stderr) -> subprocess.Popen:
    """`python -m phi3v_recipe.train ARGS` in the background, its output piped (stderr to ``stderr``)."""
    return subprocess.Popen(
        [sys.executable, "-m", "phi3v_recipe.train", *args],
        cwd=ROOT,
        env=clean_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        start_new_session=True,  # its own process group: conftest.killed_after can end it with its children
    )


def test_ctrl_c_during_training_saves_at_the_step_end_and_prints_the_resume_command(tiny_dir, sample_csv, tmp_path):
    """A real SIGINT to a training process: as SIGTERM, the step ends with a checkpoint and the resume command."""
    import signal
    import time

    out = tmp_path / "out"
    args = demo_args(tiny_dir, sample_csv, out, "--max_steps", "400", "--save_strategy", "steps", "--save_steps", "1")
    process = start_training(args, tmp_path, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600  # only a hang reaches it
        while not list(out.glob("checkpoint-*")) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.5)
        assert process.poll() is None and list(out.glob("checkpoint-*"))
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 130, stderr[-3000:]
    lines = stderr.splitlines()
    assert not (out / "README.md").exists()  # no card until the run ends (TRL's draft said "version of [None]")
    said = lines.index(f"Checkpoints of {out} are kept. Resume with:")
    assert lines[said - 1].startswith("Stopped on SIGINT after step ")
    assert lines[said + 1].startswith(f"  {sys.executable} -m phi3v_recipe.train --config ")  # works from anywhere
    assert lines[said + 1].endswith(" --resume_from_checkpoint true")


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT"])
def test_a_signal_during_the_parallel_row_checks_leaves_no_process_and_says_how_to_resume(tiny_dir, tmp_path, stop):
    """SIGTERM to the main process while two processes check the rows: its default ended the main process alone and
    left the pool's workers and manager running (1.35 GB, for minutes); SIGINT ended in datasets' TimeoutError."""
    import signal
    import time

    import psutil

    from phi3v_recipe.synthetic import write_sample_set

    rows = write_sample_set(tmp_path / "rows", rows=2000, seed=0)
    out, prepared = tmp_path / "out", tmp_path / "prepared"
    args = demo_args(tiny_dir, rows, out, "--max_rows", "2000", "--dataset_num_proc", "2", "--prepared_dir", prepared)
    process = start_training([str(arg) for arg in args], tmp_path, stderr=subprocess.PIPE)
    try:
        main = psutil.Process(process.pid)
        deadline = time.monotonic() + 300  # only a hang reaches it
        children = []
        while time.monotonic() < deadline and process.poll() is None:
            children = main.children(recursive=True)
            if len(children) >= 3 and list(prepared.glob(".*.checking")):  # two workers and their manager
                break
            time.sleep(0.02)
        assert len(children) >= 3, "the row checks never ran in several processes"
        process.send_signal(getattr(signal, stop))
        _, stderr = process.communicate(timeout=120)
    finally:
        os.killpg(process.pid, signal.SIGKILL) if process.poll() is None else None
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running after {stop}: {[p.cmdline() for p in alive]}"
    assert process.returncode == 128 + getattr(signal, stop), stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert stderr.splitlines()[-2:] == [
        f"Stopped on {stop}.",
        f"Stopped before the first checkpoint of {out}: nothing to resume; run the same command to start again.",
    ], stderr[-2000:]
    assert not list(prepared.glob(".*")), "a staging folder of the checks was left"


def test_sigterm_during_the_scored_evaluation_says_the_model_is_saved_and_how_to_score_it(tiny_dir, tmp_path):
    """Past training and saving, a resume has nothing to do (it would say the run is finished): the hint is the
    evaluation command instead."""
    import signal
    import time

    from phi3v_recipe.synthetic import write_sample_set

    rows = write_sample_set(tmp_path / "rows", rows=200, seed=0)
    out = tmp_path / "out"
    args = demo_args(tiny_dir, rows, out, "--max_rows", "200", "--eval_fraction", "0.5", "--max_steps", "2")
    process = start_training([str(arg) for arg in args], tmp_path, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300  # only a hang reaches it
        while not (out / "adapter_model.safetensors").is_file() and time.monotonic() < deadline:
            assert process.poll() is None, "the run ended before its evaluation could be stopped"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        os.killpg(process.pid, signal.SIGKILL) if process.poll() is None else None
    assert process.returncode == 143 and "Traceback" not in stderr, stderr[-3000:]
    assert "Scored evaluation" not in stdout and not (out / "metrics.json").exists()  # stopped before it was done
    assert stderr.splitlines()[-3:-1] == [
        "Stopped on SIGTERM.",
        f"The trained adapter is saved in {out}; its scored evaluation, model card and push were not done. Score it "
        "with:",
    ], stderr[-2000:]
    assert stderr.splitlines()[-1].startswith(f"  {sys.executable} -m phi3v_recipe.evaluate --config ")


def test_a_second_ctrl_c_stops_at_once():
    import signal

    from phi3v_recipe.train import StopOnSignal

    stop = StopOnSignal()
    with stop.listening():
        stop._asked(signal.SIGTERM, None)
        assert stop.signal is signal.SIGTERM and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            stop._asked(signal.SIGINT, None)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back


def test_a_conversation_reads_its_images_from_its_own_folder(tmp_path, no_loading, monkeypatch):
    chat = tmp_path / "chats" / "chat.json"
    chat.parent.mkdir()
    photo(64, 48).save(chat.parent / "bag.png")
    messages = [{"role": "user", "content": [{"type": "image", "path": "bag.png"}, {"type": "text", "text": "Hi"}]}]
    chat.write_text(json.dumps(messages))
    monkeypatch.chdir(tmp_path)  # another folder than the JSON file's
    _, named = predict.read_messages(str(chat))
    assert [Path(path) for path, _ in named] == [chat.parent / "bag.png"]
    assert len(predict.open_images_or_fail(named)) == 1
    (chat.parent / "bag.png").unlink()
    with pytest.raises(UserError, match=f"The image item of {chat} {chat.parent / 'bag.png'}: no such file"):
        predict.main(["--adapter", "x", "--messages", str(chat)])


def test_recipe_keys_can_be_cleared_from_the_command_line():
    recipe, _, _ = parse_recipe(["--config", "recipes/demo.yaml", "--image_column", "null", "--numeric_fields=null"])
    assert recipe.image_column is None and recipe.numeric_fields == []
    recipe, _, _ = parse_recipe(["--config", "recipes/demo.yaml"])
    assert recipe.image_column == "local_image_path" and recipe.numeric_fields == ["full_price"]


@pytest.mark.parametrize("module", ["train", "predict", "evaluate", "hub", "bench", "app"])
def test_python_m_help_answers_before_any_heavy_import(module, tmp_path):
    """`python -m phi3v_recipe.X --help` shows the command's help (not an error), without importing torch."""
    done = subprocess.run(
        [sys.executable, "-m", f"phi3v_recipe.{module}", "--help"],
        cwd=ROOT,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.startswith("usage: phi3v-recipe "), done.stdout + done.stderr
    assert "error" not in done.stderr.lower()
    checked = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", f"phi3v_recipe.{module}", "--help"],
        cwd=ROOT,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    imported = {line.split("|")[-1].strip() for line in checked.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"torch", "transformers", "datasets"}


def test_lora_on_lm_head_is_one_line_before_loading():
    with pytest.raises(UserError, match="lora_target_modules holds lm_head, which TRL refuses"):
        parse_recipe(
            ["--config", "recipes/demo.yaml", "--use_peft", "true", "--lora_target_modules", "qkv_proj", "lm_head"]
        )


def test_freeze_vision_tower_false_under_lora_says_what_it_does(capsys):
    parse_recipe(["--config", "recipes/demo.yaml", "--use_peft", "true", "--freeze_vision_tower", "false"])
    assert "freeze_vision_tower=false changes nothing under LoRA with these targets" in capsys.readouterr().out
    parse_recipe(
        ["--config", "recipes/demo.yaml", "--use_peft", "true", "--freeze_vision_tower", "false"]
        + ["--lora_target_modules", "qkv_proj", "q_proj"]
    )
    assert capsys.readouterr().out == ""


def test_make_train_takes_a_name_or_a_path_and_suggests_the_closest(tmp_path):
    env = clean_env(tmp_path)

    def make(*args):
        return subprocess.run(
            ["make", "-s", "--no-print-directory", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    for recipe in ("burberry_lora", "recipes/burberry_lora.yaml"):
        planned = make("-n", "train", f"RECIPE={recipe}")
        assert "--config recipes/burberry_lora.yaml" in planned.stdout, planned.stderr
    typo = make("train", "RECIPE=burbery_lora")
    assert typo.returncode == 2
    assert "error: recipes/burbery_lora.yaml does not exist. Did you mean burberry_lora? Recipes: " in typo.stderr


def test_an_adapter_records_its_base_as_an_absolute_path(tiny_dir, sample_csv, tmp_path, monkeypatch):
    from phi3v_recipe.train import main

    shutil.copytree(tiny_dir, tmp_path / "outputs" / "tiny-phi3v")
    monkeypatch.chdir(tmp_path)
    args = demo_args("outputs/tiny-phi3v", sample_csv, tmp_path / "out", "--max_steps", "1", "--eval_fraction", "0")
    main(args)
    recorded = json.loads((tmp_path / "out" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(tmp_path / "outputs" / "tiny-phi3v")  # so predict finds it from any folder


def test_an_empty_dataset_and_a_broken_base_are_one_line(tiny_dir, sample_csv, tmp_path):
    from phi3v_recipe.train import main

    empty = tmp_path / "empty.csv"
    empty.write_text("product_code,title,category3_code,full_price,local_image_path\n")
    with pytest.raises(UserError, match="has no rows: the file is empty"):
        main(demo_args(tiny_dir, empty, tmp_path / "a"))
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_dir, truncated)
    (truncated / "model.safetensors").write_bytes((tiny_dir / "model.safetensors").read_bytes()[:100_000])
    with pytest.raises(UserError, match="are not a complete safetensors file"):
        main(demo_args(truncated, sample_csv, tmp_path / "b"))
    small_vocab = tmp_path / "small_vocab"
    shutil.copytree(tiny_dir, small_vocab)
    config = json.loads((small_vocab / "config.json").read_text())
    (small_vocab / "config.json").write_text(json.dumps({**config, "vocab_size": 32000}))
    with pytest.raises(UserError, match="does not fit a Phi-3-Vision vocabulary"):
        main(demo_args(small_vocab, sample_csv, tmp_path / "c"))


def test_resuming_a_finished_run_is_refused_and_changes_nothing(tiny_dir, sample_csv, tmp_path):
    from phi3v_recipe.train import main

    out = tmp_path / "out"
    args = demo_args(tiny_dir, sample_csv, out, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1")
    main([*args, "--eval_fraction", "0"])
    adapter = (out / "adapter_model.safetensors").read_bytes()
    with pytest.raises(UserError, match="is at step 2 of 2: the run is finished, nothing to resume"):
        main([*args, "--eval_fraction", "0", "--resume_from_checkpoint", "true"])
    assert (out / "adapter_model.safetensors").read_bytes() == adapter
    trainer = main([*args, "--eval_fraction", "0", "--resume_from_checkpoint", "true", "--max_steps", "3"])
    assert trainer.state.global_step == 3  # raising max_steps trains on


def test_a_huge_image_given_to_predict_is_one_line(tmp_path, monkeypatch):
    from PIL import Image

    path = tmp_path / "huge.png"
    photo(400, 300).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)  # as a 20000x20000 image is against PIL's real limit
    with pytest.raises(UserError, match=f"--image {path}: not a readable image \\(DecompressionBombError"):
        predict.open_images_or_fail([(str(path), "--image")])


def test_sigterm_stops_at_a_step_with_a_checkpoint_and_the_resume_command(tiny_dir, sample_csv, tmp_path):
    """Preemption: SIGTERM finishes the current step, writes a complete checkpoint (with no save due), says how to
    resume, and exits 143; the printed command then finishes the run."""
    import signal

    out = tmp_path / "out"
    args = demo_args(tiny_dir, sample_csv, out, "--max_steps", "400", "--save_strategy", "no", "--eval_fraction", "0")
    process = start_training(args, tmp_path, stderr=subprocess.STDOUT)
    try:
        with killed_after(process, 600):  # only a hang reaches it
            lines = [process.stdout.readline()]
            while lines[-1] and "'loss'" not in lines[-1]:  # until a first logged step
                lines.append(process.stdout.readline())
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=300)
    finally:
        process.kill()
    output = "".join(lines) + rest
    assert process.returncode == 143, output[-3000:]
    [checkpoint] = list(out.glob("checkpoint-*"))
    step = int(checkpoint.name.split("-")[1])
    assert 1 <= step < 400 and f"Stopped on SIGTERM after step {step}." in output
    printed = f"{sys.executable} -m phi3v_recipe.train"
    command = [line.strip() for line in output.splitlines() if line.strip().startswith(printed)]
    assert command and command[0].endswith("--resume_from_checkpoint true")
    parts = shlex.split(command[0])  # run as printed, from another folder, one step further
    resumed = subprocess.run(
        [*parts[:-2], "--max_steps", str(step + 1), *parts[-2:]],
        cwd=ROOT,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {checkpoint}" in resumed.stdout
    finished = subprocess.run(  # at the checkpoint's own step: nothing left to train
        parts[:-2] + ["--max_steps", str(step), *parts[-2:]],
        cwd=ROOT,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finished.returncode == 2 and "the run is finished, nothing to resume" in finished.stderr
    assert "Resuming" not in finished.stdout  # said only when it resumes


def test_lora_on_clip_names_adapts_only_the_layers_that_run(tiny_dir, sample_csv, tmp_path):
    """CLIP's module names repeat in every layer, and the tower is read at its layer -2: the layers past it get no
    adapter (they would get no gradient, and DDP, run without find_unused_parameters, would stop)."""
    from safetensors import safe_open

    from phi3v_recipe.train import main

    out = tmp_path / "out"
    main(
        demo_args(
            tiny_dir,
            sample_csv,
            out,
            "--max_steps",
            "1",
            "--eval_fraction",
            "0",
            "--lora_target_modules",
            "qkv_proj",
            "fc1",
        )
    )
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as weights:
        adapted = {key.split("encoder.layers.")[1].split(".")[0] for key in weights.keys() if ".fc1.lora_" in key}
    assert adapted == {"0", "1"}  # the tiny tower has 3 layers; layer 2 is past the feature layer
    # Said with keys every PEFT since 0.11 reads (exclude_modules, PEFT 0.14+, made 0.11-0.13 refuse the adapter):
    # the targets in full, each a module of the model.
    config = json.loads((out / "adapter_config.json").read_text())
    assert set(config) <= PEFT_0_11_KEYS, set(config) - PEFT_0_11_KEYS
    clip = "model.vision_embed_tokens.img_processor.vision_model.encoder.layers"
    assert f"{clip}.1.mlp.fc1" in config["target_modules"] and f"{clip}.2.mlp.fc1" not in config["target_modules"]
    assert "model.layers.0.self_attn.qkv_proj" in config["target_modules"]


def test_a_trainable_parameter_that_never_reaches_the_loss_is_one_line(tiny_dir):
    from transformers import AutoModelForCausalLM

    from phi3v_recipe.train import check_every_trainable_reaches_the_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    for module in model.model.vision_embed_tokens.unused_modules():
        module.requires_grad_(False)
    check_every_trainable_reaches_the_loss(model)
    model.model.vision_embed_tokens.img_processor.vision_model.post_layernorm.weight.requires_grad_(True)
    with pytest.raises(UserError, match="trainable parameters sit in vision-tower layers that never reach the output"):
        check_every_trainable_reaches_the_loss(model)


def test_evaluation_without_an_eval_split_is_one_line(tiny_dir, sample_csv, tmp_path):
    from phi3v_recipe.train import main

    args = demo_args(tiny_dir, sample_csv, tmp_path / "out", "--eval_fraction", "0", "--eval_strategy", "steps")
    with pytest.raises(UserError, match="eval_strategy=steps but there is no eval split"):
        main(args)
