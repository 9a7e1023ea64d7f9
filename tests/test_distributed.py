"""Several processes on the CPU as the GPU configs run them: FSDP2 (accelerate_configs/fsdp.yaml, fsdp_qlora.yaml)
through Accelerate's own FSDP path, and two "machines" on 127.0.0.1. Each launch is bounded: a hang fails the test."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from phi3v_recipe.synthetic import write_sample_set

from .conftest import free_port, killed_after
from .test_train import clean_env, demo_args

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
# Equal global batches: one process with 4 rows a step, or two with 2 each; sampling at random (length grouping forms
# its groups from the per-process batch size, so it orders rows differently for different process counts); 36 training
# rows, so the 4 steps stay inside the first epoch (a last partial batch is split differently over two processes).
ONE = ["--per_device_train_batch_size", "4"]
TWO = ["--per_device_train_batch_size", "2"]
SAME_RUN = ["--max_rows", "40", "--train_sampling_strategy", "random", "--save_strategy", "steps", "--save_steps", "2"]
FULL = ["--use_peft", "false", "--freeze_vision_tower", "false", "--learning_rate", "3e-3"]


@pytest.fixture(scope="module")
def sample_csv(tmp_path_factory):
    return write_sample_set(tmp_path_factory.mktemp("sample"), rows=48, seed=0)


def fsdp(config, args, env, port):
    """Two processes launched with an FSDP config of ours, as on GPUs (only the process count and fp32 differ), through
    phi3v_recipe/bench/fsdp_on_cpu.py, which keeps Accelerate's FSDP plugin on the CPU."""
    cmd = [ACCELERATE, "launch", "--config_file", str(ROOT / "accelerate_configs" / config)]
    cmd += ["--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(port)]
    cmd += [str(ROOT / "phi3v_recipe" / "bench" / "fsdp_on_cpu.py"), "-m", "phi3v_recipe.train", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def one_process(args, env):
    cmd = [sys.executable, "-m", "phi3v_recipe.train", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def curve(out, step):
    """(loss, grad norm) per logged step, as the checkpoint at ``step`` recorded them."""
    history = json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())["log_history"]
    return [(entry["loss"], entry["grad_norm"]) for entry in history if "loss" in entry]


def assert_same_curve(a, b):
    """Equal losses; grad norms equal to 1e-4 (a norm over shards sums in another order: 1.2e-5 seen)."""
    assert len(a) == len(b)
    for (loss_a, norm_a), (loss_b, norm_b) in zip(a, b):
        assert loss_b == pytest.approx(loss_a, rel=1e-5) and norm_b == pytest.approx(norm_a, rel=1e-4), (a, b)


def max_difference(a_file, b_file):
    a, b = load_file(a_file), load_file(b_file)
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_fsdp2_full_fine_tuning_on_two_processes_equals_one_process_and_resumes_from_its_shards(
    tiny_dir, sample_csv, tmp_path
):
    """fsdp.yaml as written (the model's Phi3DecoderLayer and CLIPEncoderLayer units, reshard after forward,
    SHARDED_STATE_DICT):
    two processes train 2 steps, write a sharded checkpoint (one shard per process, half the model each), resume
    from it to step 4 and save the whole model, gathered. The loss and grad-norm curve and the weights equal one
    process's 4 steps over the same global batches (fp32; only the order of the sums differs)."""
    env = clean_env(tmp_path)
    one = tmp_path / "one"
    ok(one_process(demo_args(tiny_dir, sample_csv, one, *FULL, *SAME_RUN, *ONE, "--max_steps", "4"), env))

    sharded = tmp_path / "fsdp"
    args = demo_args(tiny_dir, sample_csv, sharded, *FULL, *SAME_RUN, *TWO)
    first = ok(fsdp("fsdp.yaml", [*args, "--max_steps", "2"], env, free_port()))
    assert first.stdout.count("Resolved recipe:") == 1
    shards = sorted((sharded / "checkpoint-2" / "pytorch_model_fsdp_0").glob("*.distcp"))
    assert [path.name for path in shards] == ["__0_0.distcp", "__1_0.distcp"]
    model_bytes = (sharded / "model.safetensors").stat().st_size
    assert all(0.4 * model_bytes < path.stat().st_size < 0.6 * model_bytes for path in shards)

    resumed = ok(fsdp("fsdp.yaml", [*args, "--max_steps", "4", "--resume_from_checkpoint", "true"], env, free_port()))
    assert str(sharded / "checkpoint-2") in resumed.stdout
    assert_same_curve(curve(one, 4), curve(sharded, 4))
    assert max_difference(one / "model.safetensors", sharded / "model.safetensors") < 1e-5
    assert json.loads((sharded / "config.json").read_text())["model_type"] == "phi3_v"


@pytest.mark.slow
def test_fsdp2_lora_on_two_processes_equals_one_process(tiny_dir, sample_csv, tmp_path):
    """LoRA under fsdp.yaml: the adapter gathered from the shards equals one process's. LoRA dropout is 0 here: with
    dropout each process draws its own masks, so the runs differ by the noise, not by sharding (the grad norm of
    step 1 differed by 1% with 0.05)."""
    env = clean_env(tmp_path)
    lora = [*SAME_RUN, "--lora_dropout", "0", "--max_steps", "4"]
    ok(one_process(demo_args(tiny_dir, sample_csv, tmp_path / "one", *lora, *ONE), env))
    ok(fsdp("fsdp.yaml", demo_args(tiny_dir, sample_csv, tmp_path / "fsdp", *lora, *TWO), env, free_port()))
    assert_same_curve(curve(tmp_path / "one", 4), curve(tmp_path / "fsdp", 4))
    adapter = "adapter_model.safetensors"
    assert max_difference(tmp_path / "one" / adapter, tmp_path / "fsdp" / adapter) < 1e-6


@pytest.mark.slow
def test_fsdp2_qlora_on_two_processes_trains_like_one_process(tiny_dir, sample_csv, tmp_path):
    """fsdp_qlora.yaml with a 4-bit base (bitsandbytes on the CPU), quant storage in the compute dtype as the config
    asks. The adapter matches one process's within the precision of the 4-bit layers' gradients (their grad norms
    come out bf16-rounded on the CPU: 5.0 against 5.03 at step 1), so the bound here is loose."""
    env = clean_env(tmp_path)
    qlora = [*SAME_RUN, "--lora_dropout", "0", "--max_steps", "2", "--load_in_4bit", "true"]
    qlora += ["--bnb_4bit_quant_storage", "float32"]
    ok(one_process(demo_args(tiny_dir, sample_csv, tmp_path / "one", *qlora, *ONE), env))
    ok(fsdp("fsdp_qlora.yaml", demo_args(tiny_dir, sample_csv, tmp_path / "fsdp", *qlora, *TWO), env, free_port()))
    losses = [[loss for loss, _ in curve(tmp_path / run, 2)] for run in ("one", "fsdp")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    adapter = "adapter_model.safetensors"
    assert max_difference(tmp_path / "one" / adapter, tmp_path / "fsdp" / adapter) < 5e-4


def two_machines(args, env, port):
    """The README's multi-node launch as two machines on 127.0.0.1 (multi_gpu.yaml, num_machines 2, one process
    each, machine ranks 0 and 1), sharing the output folder as a cluster's shared file system does."""

    def machine(rank):
        cmd = [ACCELERATE, "launch", "--config_file", str(ROOT / "accelerate_configs" / "multi_gpu.yaml")]
        cmd += ["--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank)]
        cmd += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--mixed_precision", "no"]
        cmd += ["-m", "phi3v_recipe.train", *args]
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    machines = [machine(1), machine(0)]
    try:
        outputs = [m.communicate(timeout=600)[0] for m in machines]
    finally:
        for m in machines:
            m.kill()
    for m, output in zip(machines, outputs):
        assert m.returncode == 0, output[-3000:]
    return outputs[1]


@pytest.mark.slow
def test_two_machines_on_localhost_train_save_and_resume(tiny_dir, sample_csv, tmp_path):
    env = clean_env(tmp_path)
    out = tmp_path / "out"
    args = demo_args(tiny_dir, sample_csv, out, *TWO, "--save_strategy", "steps", "--save_steps", "2")
    args += ["--eval_strategy", "steps", "--eval_steps", "2", "--eval_fraction", "0.25"]
    two_machines([*args, "--max_steps", "2"], env, free_port())
    assert (out / "checkpoint-2").is_dir() and (out / "adapter_model.safetensors").is_file()
    rank0 = two_machines([*args, "--max_steps", "4", "--resume_from_checkpoint", "true"], env, free_port())
    assert str(out / "checkpoint-2") in rank0
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4]
    assert "eval_loss" in json.loads((out / "metrics.json").read_text())


def ddp(args, env, port):
    """Two processes of DDP over gloo (`accelerate launch --multi_gpu --num_processes 2`; the recipe's use_cpu)."""
    cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(port)]
    return subprocess.run(
        [*cmd, "-m", "phi3v_recipe.train", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_a_two_process_run_stopped_and_resumed_is_bit_identical_to_one_that_never_stopped(
    tiny_dir, sample_csv, tmp_path
):
    """Length-grouped batches, gradient accumulation 2, two DataLoader workers per process, LoRA with dropout: stopped
    after step 2 and after step 3, each resumed to step 5, the loss curve and the adapter are the same bits as the
    run that never stopped (the RNG states of every process are restored: the dropout masks and the batches)."""
    env = clean_env(tmp_path)
    args = ["--max_rows", "40", "--gradient_accumulation_steps", "2", "--dataloader_num_workers", "2"]
    args += ["--train_sampling_strategy", "group_by_length", "--save_strategy", "steps", "--save_steps", "1"]
    args = demo_args(tiny_dir, sample_csv, tmp_path / "whole", *args, *TWO)
    ok(ddp([*args, "--max_steps", "5"], env, free_port()))
    whole = curve(tmp_path / "whole", 5)
    for stop in (2, 3):
        out = tmp_path / f"stopped-{stop}"
        here = [*args, "--output_dir", str(out)]
        ok(ddp([*here, "--max_steps", str(stop)], env, free_port()))
        ok(ddp([*here, "--max_steps", "5", "--resume_from_checkpoint", "true"], env, free_port()))
        assert curve(out, 5) == whole
        adapter = "adapter_model.safetensors"
        assert max_difference(tmp_path / "whole" / adapter, out / adapter) == 0.0


@pytest.mark.slow
def test_sigterm_during_data_preparation_stops_every_process_and_a_rerun_takes_the_folder_over(tmp_path, tiny_dir):
    """Preempted before the first step: both processes and the launcher end at once (nothing to save), nothing is
    left running, and the same command run again trains (the folder holds only run_recipe.json, no run to protect)."""
    import os
    import signal
    import time

    from .test_train import running_with

    csv = write_sample_set(tmp_path / "data", rows=1500, seed=0)
    out = tmp_path / "out"
    args = demo_args(tiny_dir, csv, out, "--max_rows", "1500", "--max_steps", "2", *TWO)
    cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port())]
    cmd += ["-m", "phi3v_recipe.train", *args]
    env = clean_env(tmp_path)
    launch = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        with killed_after(launch, 300):
            seen = ""
            while "Checking rows" not in seen:
                seen += launch.stdout.read(1) or "(ended)"
                assert not seen.endswith("(ended)"), seen[-3000:]
        os.killpg(launch.pid, signal.SIGTERM)
        launch.communicate(timeout=120)
    finally:
        launch.kill()
    assert launch.returncode == 143
    time.sleep(1)
    assert not running_with(str(out))
    assert sorted(path.name for path in out.iterdir()) == ["run_recipe.json"]
    ok(ddp(args, env, free_port()))
    assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_sigterm_during_a_checkpoint_write_lets_it_finish_and_stops_at_the_next_step(tiny_dir, sample_csv, tmp_path):
    """The signal lands while a checkpoint is being written (the launch is frozen with SIGSTOP the moment the staging
    folder appears, signalled, then let go): that write completes, both processes stop together one step later
    with a checkpoint, and every checkpoint left is complete."""
    import os
    import signal
    import time

    from phi3v_recipe import runs

    out = tmp_path / "out"
    args = demo_args(tiny_dir, sample_csv, out, "--max_steps", "400", "--save_strategy", "steps", "--save_steps", "1")
    args += ["--save_total_limit", "100", *TWO]
    cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port())]
    launch = subprocess.Popen(
        [*cmd, "-m", "phi3v_recipe.train", *args, "--eval_fraction", "0"], cwd=ROOT, env=clean_env(tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    staging, during_a_save, deadline = out / runs.STAGING, False, time.monotonic() + 300
    try:
        while not during_a_save and launch.poll() is None and time.monotonic() < deadline:
            if staging.exists():
                os.killpg(launch.pid, signal.SIGSTOP)
                during_a_save = staging.exists()  # still writing: the signal arrives mid-save
                if during_a_save:
                    os.killpg(launch.pid, signal.SIGTERM)
                os.killpg(launch.pid, signal.SIGCONT)
            time.sleep(0.0005)
        output, _ = launch.communicate(timeout=300)
    finally:
        launch.kill()
    assert during_a_save
    assert launch.returncode == 143, output[-3000:]
    checkpoints = sorted(out.glob("checkpoint-*"), key=runs.checkpoint_step)
    assert checkpoints and not staging.exists()
    assert all(not runs.checkpoint_problems(path) for path in checkpoints)
    assert f"Stopped on SIGTERM after step {runs.checkpoint_step(checkpoints[-1])}." in output


@pytest.mark.slow
def test_phi4mm_on_two_ddp_processes_equals_one_process(tiny4_dir, sample_csv, tmp_path):
    """Phi-4-multimodal's vision LoRA with its image embedding (a PEFT saved module) under DDP over two processes:
    the same loss curve and the same adapter as one process with the same global batch. The frozen SigLIP layer and
    audio encoder leave no unused trainable parameter, so DDP runs without find_unused_parameters."""
    env = clean_env(tmp_path)

    def args(out, *extra):
        return [
            *("--config", str(ROOT / "recipes/demo_phi4mm.yaml"), "--model_name_or_path", str(tiny4_dir)),
            *("--dataset", str(sample_csv), "--output_dir", str(out), "--max_steps", "4", "--logging_steps", "1"),
            *("--eval_strategy", "no", "--report_to", "none", "--dataloader_num_workers", "0"),
            *SAME_RUN,
            *extra,
        ]

    ok(one_process(args(tmp_path / "one", *ONE), env))
    ok(ddp(args(tmp_path / "ddp", *TWO), env, free_port()))
    assert_same_curve(curve(tmp_path / "one", 4), curve(tmp_path / "ddp", 4))
    adapter = "adapter_model.safetensors"
    assert max_difference(tmp_path / "one" / adapter, tmp_path / "ddp" / adapter) < 1e-6


@pytest.mark.slow
def test_phi4mm_under_fsdp2_on_two_processes_equals_one_process(tiny4_dir, sample_csv, tmp_path):
    """fsdp.yaml on Phi-4-multimodal (its decoder layers the shard units, from the model): the vision LoRA with the
    image embedding trained beside it, gathered from the shards, equals one process's."""
    env = clean_env(tmp_path)

    def args(out, *extra):
        return [
            *("--config", str(ROOT / "recipes/demo_phi4mm.yaml"), "--model_name_or_path", str(tiny4_dir)),
            *("--dataset", str(sample_csv), "--output_dir", str(out), "--max_steps", "4", "--logging_steps", "1"),
            *("--eval_strategy", "no", "--report_to", "none", "--dataloader_num_workers", "0"),
            *SAME_RUN,
            *extra,
        ]

    ok(one_process(args(tmp_path / "one", *ONE), env))
    ok(fsdp("fsdp.yaml", args(tmp_path / "fsdp", *TWO), env, free_port()))
    assert_same_curve(curve(tmp_path / "one", 4), curve(tmp_path / "fsdp", 4))
    adapter = "adapter_model.safetensors"
    assert max_difference(tmp_path / "one" / adapter, tmp_path / "fsdp" / adapter) < 1e-6


def accelerate_config(tmp_path, processes: int) -> Path:
    """Our single-GPU or multi-GPU config as it ships, for the CPU: its process count, a free port, fp32."""
    import yaml

    name = "multi_gpu.yaml" if processes > 1 else "single_gpu.yaml"
    config = yaml.safe_load((ROOT / "accelerate_configs" / name).read_text())
    config |= {"num_processes": processes, "mixed_precision": "no", "main_process_port": free_port()}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def claimed_folder(tmp_path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    for name in ("run_recipe.json", "metrics.json"):  # a finished run of another recipe
        (out / name).write_text("{}")
    return out


@pytest.mark.parametrize("processes", [1, 2])
def test_a_user_error_under_the_launch_command_is_one_line_with_status_2(tiny_dir, sample_csv, tmp_path, processes):
    """accelerate launch follows a process's one-line error with its own report (one process: a CalledProcessError
    traceback; two: a ChildFailedError table and torch's log lines) and exits 1; `phi3v-recipe launch` shows the line
    alone, with status 2."""
    out = claimed_folder(tmp_path)
    command = [str(Path(sys.executable).parent / "phi3v-recipe"), "launch"]
    command += ["--config_file", str(accelerate_config(tmp_path, processes)), *demo_args(tiny_dir, sample_csv, out)]
    result = subprocess.run(command, cwd=ROOT, env=clean_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        f"error: {out} already holds a run (its adapter, checkpoints or metrics). Resume it with "
        "--resume_from_checkpoint true, start afresh there with --overwrite_output_dir true (deletes it), or choose "
        "another --output_dir."
    ], result.stderr[-3000:]


def test_process_zeros_refusal_stops_every_process_without_a_traceback(tiny_dir, sample_csv, tmp_path):
    """Process 0 refuses the output folder: process 1 used to pass the claim, wait for it at the next barrier and end
    in gloo's 'Connection closed by peer' traceback. Now it stops with it, and the error is said once."""
    out = claimed_folder(tmp_path)
    cmd = [ACCELERATE, "launch", "--quiet", "--config_file", str(accelerate_config(tmp_path, 2))]
    cmd += ["-m", "phi3v_recipe.train", *demo_args(tiny_dir, sample_csv, out)]
    result = subprocess.run(cmd, cwd=ROOT, env=clean_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1  # accelerate's own status for any failed process
    assert "Traceback" not in result.stderr and "[rank1]" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.count(f"error: {out} already holds a run") == 1
    assert "exitcode  : 2" in result.stderr and "exitcode  : -15" not in result.stderr  # both stopped on their own
