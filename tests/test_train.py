"""Training end to end on the tiny checkpoint and a small synthetic set, on the CPU."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from phi3v_recipe.hub import PushNotReady
from phi3v_recipe.synthetic import write_sample_set
from phi3v_recipe.train import main

from .conftest import free_port, killed_after

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sample_csv(tmp_path_factory):
    return write_sample_set(tmp_path_factory.mktemp("sample"), rows=48, seed=0)


def demo_args(tiny_dir, sample_csv, out, *extra):
    """The demo recipe, shrunk to seconds."""
    return [
        "--config",
        str(ROOT / "recipes/demo.yaml"),
        "--model_name_or_path",
        str(tiny_dir),
        "--dataset",
        str(sample_csv),
        "--output_dir",
        str(out),
        "--max_rows",
        "16",
        "--max_steps",
        "6",
        "--per_device_train_batch_size",
        "4",
        "--logging_steps",
        "1",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--dataloader_num_workers",
        "0",
        "--report_to",
        "none",
        # LoRA on the language model, as the GPU recipes train (the demo itself fully fine-tunes the tiny model).
        *("--use_peft", "true", "--lora_r", "16", "--lora_alpha", "32", "--freeze_vision_tower", "true"),
        *("--learning_rate", "5e-3", "--overwrite_output_dir", "false"),
        *extra,
    ]


def clean_env(tmp_path, **extra):
    """An environment with no Hugging Face or W&B credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "WANDB_", "HUGGING"))}
    env.update(HOME=str(tmp_path), HF_HOME=str(tmp_path / "hf"), PYTHONUNBUFFERED="1", **extra)
    return env


def losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_demo_recipe_trains_lora_only_on_the_language_model(tiny_dir, sample_csv, tmp_path):
    trainer = main(demo_args(tiny_dir, sample_csv, tmp_path / "out"))

    curve = losses(trainer)
    print("loss curve:", curve)
    assert len(curve) == 6 and curve[-1] < curve[0] - 0.5

    model = trainer.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("vision_embed_tokens" in n for n in trainable)  # LoRA on the language model only

    original = load_file(tiny_dir / "model.safetensors")
    base = model.get_base_model().state_dict()
    for key, value in original.items():
        current = base[key] if key in base else base[key.replace(".weight", ".base_layer.weight")]
        torch.testing.assert_close(current, value, atol=0, rtol=0, msg=key)

    out = tmp_path / "out"
    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: every adapter moved
    assert not any("vision_embed_tokens" in k for k in adapter)
    for name in ["adapter_config.json", "processor_config.json", "tokenizer.json", "README.md", "metrics.json"]:
        assert (out / name).is_file(), name
    assert not list(out.glob("*model*.bin")) and not list(out.glob("*.pt"))  # weights only as safetensors
    assert json.loads((out / "metrics.json").read_text())["train_loss"] > 0
    assert "train_loss" in (out / "README.md").read_text()


def test_activation_checkpointing_every_n_th_layer_is_a_recipe_setting_and_batches_copy_without_waiting(
    tiny_dir, sample_csv, tmp_path
):
    """transformers' own policy (``activation_checkpointing_kwargs: {every_n_layers: N}``) reaches the decoder layers
    through our trainer; the loss is the same as with every layer checkpointed or none; pinned batches are copied
    non-blocking."""
    runs = {}
    for name, extra in {
        "none": ["--activation_checkpointing", "false"],
        "all": ["--activation_checkpointing", "true"],
        "every 2nd": ["--activation_checkpointing", "true"],
    }.items():
        if name == "every 2nd":
            extra += ["--activation_checkpointing_kwargs", '{"use_reentrant": false, "every_n_layers": 2}']
        trainer = main(demo_args(tiny_dir, sample_csv, tmp_path / name.replace(" ", "-"), *extra, "--max_steps", "2"))
        layers = trainer.model.get_base_model().model.layers
        runs[name] = (losses(trainer), [layer.gradient_checkpointing for layer in layers])
        # Non-blocking copies follow pinned memory (on by default; transformers turns it off with use_cpu).
        assert trainer.accelerator.non_blocking == trainer.args.dataloader_pin_memory
    assert runs["none"][1] == [False] * len(layers) and runs["all"][1] == [True] * len(layers)
    assert runs["every 2nd"][1] == [i % 2 == 0 for i in range(len(layers))]
    for name in ("all", "every 2nd"):
        assert runs[name][0] == pytest.approx(runs["none"][0], rel=1e-5)


def test_cpu_loss_scores_labelled_positions_only_and_equals_trl_fused_loss(tiny_dir, sample_csv, tmp_path):
    from trl import SFTTrainer

    trainer = main(demo_args(tiny_dir, sample_csv, tmp_path / "out", "--max_steps", "1"))
    model = trainer.model
    batch = trainer.data_collator(trainer.train_dataset.select(range(4)).to_list())
    items = (batch["labels"][:, 1:] != -100).sum()
    head_rows = []
    hook = model.get_base_model().lm_head.register_forward_hook(lambda m, i, o: head_rows.append(i[0].shape[:-1]))

    def loss_and_grads(compute_loss, **kwargs):
        model.zero_grad()
        trainer._metrics["train"].clear()
        loss = compute_loss(trainer, model, dict(batch), **kwargs)
        loss.backward()
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k != "num_tokens"}
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad], metrics

    for kwargs in ({}, {"num_items_in_batch": items * 2}):
        ours = loss_and_grads(type(trainer).compute_loss, **kwargs)
        trl = loss_and_grads(SFTTrainer.compute_loss, **kwargs)
        torch.testing.assert_close(ours[0], trl[0], rtol=1e-5, atol=1e-6)
        for a, b in zip(ours[1], trl[1], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        assert ours[2] == pytest.approx(trl[2], rel=1e-4)
    hook.remove()
    # TRL's fused head on the CPU never calls lm_head (it tiles the weight itself); ours calls it on the union of
    # labelled positions: a few per row, far fewer than the sequence length.
    labelled_columns = int((batch["labels"][:, 1:] != -100).any(0).sum())
    assert head_rows and all(shape == (4, labelled_columns) for shape in head_rows)
    assert labelled_columns < batch["input_ids"].shape[1] / 4


def test_qlora_trains_on_the_cpu(tiny_dir, sample_csv, tmp_path):
    import bitsandbytes as bnb

    trainer = main(demo_args(tiny_dir, sample_csv, tmp_path / "out", "--load_in_4bit", "true", "--max_steps", "2"))

    assert all(torch.isfinite(torch.tensor(loss)) for loss in losses(trainer))
    base = trainer.model.get_base_model()
    assert isinstance(base.model.layers[0].self_attn.qkv_proj.base_layer, bnb.nn.Linear4bit)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in base.model.vision_embed_tokens.modules())
    assert not isinstance(base.lm_head, bnb.nn.Linear4bit)
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def launch_two_processes(args, env, port):
    """`accelerate launch --multi_gpu --num_processes 2` on the CPU (DDP over gloo), bounded: a hang fails."""
    cmd = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--main_process_port",
        str(port),
        "-m",
        "phi3v_recipe.train",
        *args,
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_two_process_ddp_trains_and_resumes_on_the_cpu(tiny_dir, sample_csv, tmp_path):
    """Two processes train, checkpoint, and resume to the end: both resume from the same checkpoint (they used to
    disagree on the steps left and deadlock at the last step), evaluate and save; DDP does no unused-parameter pass."""
    out = tmp_path / "out"
    args = demo_args(tiny_dir, sample_csv, out, "--per_device_train_batch_size", "2")
    args += ["--save_strategy", "steps", "--save_steps", "1", "--eval_strategy", "steps", "--eval_steps", "2"]
    args += ["--eval_fraction", "0.25"]
    env = clean_env(tmp_path, PHI3V_PREPARED_DIR=str(tmp_path / "prepared"))
    first = launch_two_processes([*args, "--max_steps", "2"], env, free_port())
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    # The data is checked once: by the first process, while the other waits and then reads its result back.
    assert first.stderr.count("Checking rows (train): 100%") == 1
    assert first.stdout.count("Data (train): the prepared rows in") == 1
    assert (out / "checkpoint-2").is_dir() and (out / "adapter_model.safetensors").is_file()
    assert "Saved the trained adapter" in first.stdout
    assert first.stdout.count("Resolved recipe:") == 1  # logged by the main process only
    assert "find_unused_parameters=True" not in first.stderr  # torch warns when it was on and found nothing unused

    resumed = launch_two_processes([*args, "--max_steps", "4", "--resume_from_checkpoint", "true"], env, free_port())
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Checking rows" not in resumed.stderr and resumed.stdout.count("the prepared rows in") == 2
    assert "Resuming from" in resumed.stdout and str(out / "checkpoint-2") in resumed.stdout
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4]
    assert json.loads((out / "metrics.json").read_text())["train_loss"] > 0


def run_module(module, args, env, timeout=600):
    """Run ``python -m phi3v_recipe.<module> args`` in the repository, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", f"phi3v_recipe.{module}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_train(args, env):
    return run_module("train", args, env)


def test_wandb_offline_run_holds_metrics_and_predictions(tiny_dir, sample_csv, tmp_path):
    out = tmp_path / "out"
    args = demo_args(
        tiny_dir,
        sample_csv,
        out,
        "--report_to",
        "wandb",
        "--max_steps",
        "2",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
        "--max_rows",
        "20",
        "--eval_fraction",
        "0.1",
        "--predictions_to_log",
        "2",
    )
    result = run_train(args, clean_env(tmp_path, HF_TOKEN="hf_secret_value_123"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "W&B: offline" in result.stdout and "wandb sync" in result.stdout
    assert "hf_secret_value_123" not in result.stdout + result.stderr  # secrets are never logged

    [run_dir] = list((out / "wandb").glob("offline-run-*"))
    # The run log is protobuf records (wandb has no public reader for it): the logged keys appear in it verbatim.
    [run_log] = list(run_dir.glob("run-*.wandb"))
    logged = run_log.read_bytes()
    for key in ("train/loss", "train/learning_rate", "train/grad_norm", "train/samples_per_second", "eval/loss"):
        assert key.encode() in logged, key
    tables = sorted((run_dir / "files" / "media" / "table" / "eval").glob("predictions_*.table.json"))
    assert tables  # one per evaluation
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["step", "image", "truth", "prediction"] and len(table["data"]) == 2
    assert table["data"][0][2].startswith("Product: ")
    # W&B writes a table's images only into its run_table artifact, whose files it stages outside the run folder
    # unless WANDB_DATA_DIR says otherwise: every staged file the run points at must be in the output folder.
    staged = {Path(p.decode()) for p in re.findall(rb"/[\w./-]*artifacts/staging/tmp[a-z0-9_]{8}", logged)}
    assert staged and all(out in p.parents and p.is_file() for p in staged), staged
    images = [p for p in staged if p.read_bytes().startswith(b"\x89PNG")]
    assert len(images) >= 2  # the two logged rows' pictures (and the scored table's)
    assert b"eval/plots/category3_code" in logged and b"eval/plots/full_price" in logged
    assert (out / "plots" / "category3_code.png").is_file() and (out / "plots" / "full_price.png").is_file()
    card = (out / "README.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert "eval_loss" in metrics and f"{metrics['eval_loss']:.4g}" in card


def test_killed_run_resumes_on_the_same_loss_curve(tiny_dir, sample_csv, tmp_path):
    common = [
        "--max_steps",
        "6",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--save_total_limit",
        "5",
        "--max_rows",
        "24",
    ]
    env = clean_env(tmp_path)
    full = run_train(demo_args(tiny_dir, sample_csv, tmp_path / "full", *common), env)
    assert full.returncode == 0, full.stderr[-3000:]

    out = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "phi3v_recipe.train", *demo_args(tiny_dir, sample_csv, out, *common)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = out / "checkpoint-2" / "trainer_state.json"
    deadline = time.time() + 300
    while not state.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert state.exists() and not (out / "checkpoint-6").exists(), "the run was not killed between checkpoints"

    resumed = run_train(demo_args(tiny_dir, sample_csv, out, *common, "--resume_from_checkpoint", "true"), env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    def curve(folder):
        history = json.loads((folder / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
        return {e["step"]: e["loss"] for e in history if "loss" in e}

    uninterrupted, continued = curve(tmp_path / "full"), curve(out)
    assert sorted(continued) == list(range(1, 7))
    for step in range(1, 7):
        assert continued[step] == pytest.approx(uninterrupted[step], rel=1e-4), step


def test_push_without_token_fails_before_training(tiny_dir, sample_csv, tmp_path, monkeypatch):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("phi3v_recipe.hub.get_token", lambda: None)
    monkeypatch.setattr("phi3v_recipe.train.load_model", lambda *a: pytest.fail("the model was loaded"))
    with pytest.raises(PushNotReady, match="No Hugging Face token.*HF_TOKEN"):
        main(demo_args(tiny_dir, sample_csv, tmp_path / "out", "--push_to_hub", "true", "--hub_model_id", "me/x"))
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_failed_upload_keeps_the_adapter_and_says_how_to_retry(tiny_dir, sample_csv, tmp_path):
    # A token is present, but the Hub endpoint refuses connections: the upload fails after training.
    env = clean_env(tmp_path, HF_TOKEN="hf_fake_token_for_test", HF_ENDPOINT="http://127.0.0.1:9")
    out = tmp_path / "out"
    result = run_train(
        demo_args(
            tiny_dir, sample_csv, out, "--max_steps", "2", "--push_to_hub", "true", "--hub_model_id", "me/phi3v-test"
        ),
        env,
    )
    assert result.returncode == 2, result.stderr[-3000:]  # a failed push fails the command
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: Push to me/phi3v-test failed") and "Traceback" not in result.stderr
    assert f"python -m phi3v_recipe.hub push {out} --repo_id me/phi3v-test" in line
    assert (out / "adapter_model.safetensors").is_file() and (out / "README.md").is_file()
    assert "hf_fake_token_for_test" not in result.stdout + result.stderr


def running_with(text: str) -> list[int]:
    """The processes whose command line holds ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            pass
    return found


@pytest.mark.parametrize(
    ("workers", "stop"),
    [
        ("0", "SIGTERM"),
        pytest.param("2", "SIGTERM", marks=pytest.mark.slow),
        pytest.param("2", "SIGINT", marks=pytest.mark.slow),  # Ctrl-C in the terminal: the whole process group
    ],
)
def test_two_processes_stop_together_on_a_signal_with_a_checkpoint(tiny_dir, sample_csv, tmp_path, workers, stop):
    """A preempted machine (SIGTERM) or a Ctrl-C (SIGINT) signals every process, DataLoader workers included: both
    training processes finish the same step, one checkpoint is written, the launch exits 128 + the signal and says
    how to resume."""
    import contextlib
    import os
    import signal
    import time

    out = tmp_path / "out"
    args = demo_args(tiny_dir, sample_csv, out, "--max_steps", "400", "--per_device_train_batch_size", "2")
    args += ["--dataloader_num_workers", workers]
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2"]
    cmd += ["--main_process_port", str(free_port()), "-m", "phi3v_recipe.train", *args, "--eval_fraction", "0"]
    launch = subprocess.Popen(
        cmd, cwd=ROOT, env=clean_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        with killed_after(launch, 600):  # only a hang reaches it
            lines = [launch.stdout.readline()]
            while lines[-1] and "'loss'" not in lines[-1]:
                lines.append(launch.stdout.readline())
        os.killpg(launch.pid, signal.Signals[stop])  # the launcher and both processes, as a shutdown or a Ctrl-C
        rest, _ = launch.communicate(timeout=300)
        time.sleep(1)
        left_behind = True
        try:
            os.killpg(launch.pid, 0)  # any process of the launch still there?
        except ProcessLookupError:
            left_behind = False
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launch.pid, signal.SIGKILL)
    assert not left_behind
    # DataLoader workers have their own process group (the group's signal is not theirs): they end with their process.
    deadline = time.monotonic() + 30
    while running_with(str(out)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not running_with(str(out))
    output = "".join(lines) + rest
    assert launch.returncode == 128 + signal.Signals[stop], output[-3000:]
    checkpoints = list(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1, output[-3000:]
    [checkpoint] = checkpoints
    assert f"Stopped on {stop} after step {checkpoint.name.split('-')[1]}." in output
    assert "accelerate launch [your launch flags] -m phi3v_recipe.train" in output
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] >= 1
