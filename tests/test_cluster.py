"""SLURM: the batch script's plumbing (ranks, addresses, process counts) without SLURM, and the script itself against a
real SLURM (Debian's slurmctld, slurmd and munge) started on 127.0.0.1: a job that is told its time is up checkpoints,
requeues, comes back by itself and ends where an uninterrupted job ends; scancel leaves no process behind."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phi3v_recipe.errors import UserError
from phi3v_recipe.slurm import first_host, launch_args, main, processes_per_node

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "launch" / "slurm.sbatch"
SLURM = ("slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "munged", "mungekey")


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [
        ("gpu07", "gpu07"),
        ("gpu[07-09,12]", "gpu07"),
        ("gpu[012,015]", "gpu012"),
        ("a1,b[2-3]", "a1"),
        ("n-x[5]", "n-x5"),
    ],
)
def test_the_main_process_is_the_jobs_first_node(nodelist, host):
    assert first_host(nodelist) == host


def test_each_node_launches_with_its_rank_and_the_jobs_process_count():
    """4 nodes x 8 GPUs: 32 processes, this node's rank, the first node's address, a port from the job id."""
    job = {"SLURM_JOB_NUM_NODES": "4", "SLURM_JOB_NODELIST": "gpu[03-06]", "SLURM_JOB_ID": "123456"}
    for rank in range(4):
        args = launch_args(job | {"SLURM_NODEID": str(rank), "SLURM_GPUS_ON_NODE": "8"})
        assert args == [
            "--num_machines", "4", "--machine_rank", str(rank), "--num_processes", "32",
            "--main_process_ip", "gpu03", "--main_process_port", str(20000 + 123456 % 20000),
        ]  # fmt: skip
    cpu = launch_args(job | {"SLURM_NODEID": "0", "PROCESSES_PER_NODE": "2", "MAIN_PROCESS_PORT": "29511"})
    assert cpu[cpu.index("--num_processes") + 1] == "8" and cpu[-1] == "29511"
    with pytest.raises(UserError, match="has no GPUs .* PROCESSES_PER_NODE"):
        processes_per_node({})


def test_the_node_command_is_phi3v_recipe_launch_resuming_whatever_is_there(monkeypatch, capsys):
    ran = []
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(os, "execv", lambda path, command: ran.append(command))
    job = {"SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_ID": "7"}
    for name, value in (job | {"SLURM_GPUS_ON_NODE": "4", "ACCELERATE_ARGS": "--mixed_precision no"}).items():
        monkeypatch.setenv(name, value)
    main(["node", "demo", "accelerate_configs/fsdp.yaml", "--max_steps", "5"])
    (command,) = ran
    assert command[1:4] == ["launch", "--config_file", "accelerate_configs/fsdp.yaml"]
    assert command[command.index("--machine_rank") + 1] == "1" and command[command.index("--num_processes") + 1] == "8"
    assert command[-6:] == ["--config", "recipes/demo.yaml", "--resume_from_checkpoint", "auto", "--max_steps", "5"]
    assert "--mixed_precision" in command and "Node 1 of job 7" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ([], "error: say which recipe: launch/slurm.sbatch RECIPE"),
        (["burbery_lora"], "error: Recipe recipes/burbery_lora.yaml does not exist. Did you mean"),
        (
            ["demo", "accelerate_configs/fdsp.yaml"],
            "error: The accelerate config accelerate_configs/fdsp.yaml does not",
        ),
        (["demo", "--max_stepz", "3"], "error: Unknown flag --max_stepz. Did you mean --max_steps?"),
    ],
)
def test_a_mistake_is_one_line_and_nothing_is_queued(args, said, tmp_path):
    """The script run as a command checks, then submits itself; an sbatch on PATH that records its calls is never
    called on a mistake, and is called once, with the user's options first, when all is well."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/queued\necho "Submitted batch job 1"\n')
    (fake / "sbatch").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env |= {"PATH": f"{fake}:{env['PATH']}", "PHI3V_PYTHON": sys.executable, "SBATCH_OPTIONS": "--nodes 2"}
    done = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().startswith(said), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "queued").exists()
    good = subprocess.run(["bash", str(SCRIPT), "demo"], env=env, capture_output=True, text=True, timeout=120)
    assert good.returncode == 0 and "Submitted batch job 1" in good.stdout, good.stderr
    assert (tmp_path / "queued").read_text() == "--nodes 2 launch/slurm.sbatch demo\n"


# A real SLURM on this machine, for the slow tier and `make test-cluster`.


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(what: str, check, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """munged, slurmctld and one slurmd (this machine's cores as one CPU node) on 127.0.0.1, each with its own files
    under a temporary folder; the environment that points SLURM's commands at them."""
    missing = [name for name in SLURM if not shutil.which(name)]
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} missing): make test-cluster installs it")
    if os.geteuid() != 0:
        pytest.skip("slurmd runs jobs as their user only when started as root")
    home = tmp_path_factory.mktemp("slurm")
    for folder in ("state", "spool", "log"):
        (home / folder).mkdir()
    subprocess.run(["mungekey", "--create", "--keyfile", str(home / "munge.key")], check=True)
    (home / "munge.key").chmod(0o400)
    sock = home / "munge.sock"
    munge = ["munged", "--foreground", "--force", f"--socket={sock}", f"--key-file={home / 'munge.key'}"]
    munge += [f"--log-file={home}/log/munged.log", f"--pid-file={home}/munged.pid", f"--seed-file={home}/seed"]
    daemons = [subprocess.Popen(munge, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)]
    wait_for("munged's socket", sock.exists, 20, 0.2)
    config = home / "slurm.conf"
    config.write_text(
        f"""ClusterName=phi3v-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CryptoType=crypto/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket={sock},cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmUser=root
SlurmdUser=root
StateSaveLocation={home}/state
SlurmdSpoolDir={home}/spool
SlurmctldPidFile={home}/slurmctld.pid
SlurmdPidFile={home}/slurmd.pid
SlurmctldLogFile={home}/log/slurmctld.log
SlurmdLogFile={home}/log/slurmd.log
JobRequeue=1
KillWait=60
SchedulerType=sched/backfill
NodeName=localhost NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory=4000 State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
    )
    env = {**os.environ, "SLURM_CONF": str(config)}
    daemons.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(config)], env=env, stderr=subprocess.STDOUT))
    daemons.append(subprocess.Popen(["slurmd", "-D", "-f", str(config), "-N", "localhost"], env=env))

    def idle():
        done = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
        return done.stdout.strip() == "idle"

    try:
        wait_for("the node to be idle", idle, 60)
        yield env | {"SLURM_HOME": str(home)}
    finally:
        subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True)
        for daemon in reversed(daemons):
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()


def submit(env, tmp_path, name: str, flags: list[str]) -> str:
    """The demo recipe in two processes, through the script run as a user runs it; the job id."""
    job_env = env | {
        "SBATCH_OPTIONS": f"--cpus-per-task {os.cpu_count()} --output {tmp_path}/{name}-%j.log --job-name {name}",
        "PROCESSES_PER_NODE": "2",
        "ACCELERATE_ARGS": "--mixed_precision no",
        "PHI3V_PYTHON": sys.executable,
        "PHI3V_SLURM_LOGS": str(tmp_path),
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
    }
    done = subprocess.run(
        [str(SCRIPT), "demo", *flags], cwd=ROOT, env=job_env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.split()[-1]


def job_state(env, job: str) -> str:
    done = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True)
    return next((word.split("=")[1] for word in done.stdout.split() if word.startswith("JobState=")), "GONE")


def processes_of(out: Path) -> list[str]:
    """Processes whose command line names this run's output folder."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(out) in command and proc.name.isdigit() and int(proc.name) != os.getpid():
            found.append(command)
    return found


def losses(out: Path) -> dict[int, float]:
    state = json.loads((out / "checkpoint-120" / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


def weights(out: Path) -> dict[str, bytes]:
    from safetensors.torch import load_file

    return {name: tensor.numpy().tobytes() for name, tensor in load_file(out / "model.safetensors").items()}


def demo_flags(out: Path) -> list[str]:
    return [
        "--output_dir", str(out), "--max_rows", "400", "--max_steps", "120", "--save_steps", "20",
        "--save_total_limit", "10", "--logging_steps", "10", "--eval_strategy", "no", "--scored_evaluation", "false",
        "--dataloader_num_workers", "2", "--report_to", "wandb",
    ]  # fmt: skip


@pytest.mark.slow
def test_a_job_told_its_time_is_up_requeues_resumes_by_itself_and_ends_as_an_uninterrupted_one(slurm, tmp_path):
    """SLURM's warning before the time limit (SIGUSR1 to the batch script, as --signal=B:USR1@300 sends it; here from
    scancel --signal) requeues the job; the training processes checkpoint on SLURM's SIGTERM; the job starts again
    with no one touching it, resumes from the newest complete checkpoint and finishes with the losses of a job that
    was never interrupted, in the same W&B run."""
    base = tmp_path / "base"
    job = submit(slurm, tmp_path, "base", demo_flags(base))
    wait_for("the uninterrupted job", lambda: job_state(slurm, job) == "COMPLETED", 600, 2)

    out = tmp_path / "requeued"
    job = submit(slurm, tmp_path, "requeued", demo_flags(out))
    wait_for("a first checkpoint", lambda: (out / "checkpoint-20" / "trainer_state.json").is_file(), 300, 0.5)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=slurm, check=True)
    wait_for("the job to come back and finish", lambda: job_state(slurm, job) == "COMPLETED", 600, 2)

    log = (tmp_path / f"requeued-{job}.log").read_text()
    node = (tmp_path / f"requeued-{job}-node0.log").read_text()
    print(log, node[-3000:], sep="\n")
    assert "Time limit near: requeueing" in log and f"Job {job} (start 2)" in log
    assert "Stopped on SIGTERM after step" in node and f"Resuming from {out}/checkpoint-" in node
    stopped = int(node.split("Stopped on SIGTERM after step ")[1].split(".")[0])
    assert 20 <= stopped < 120
    # Every logged loss but the one whose 10-step window the stop cut (the Trainer averages over the steps it ran
    # since the last log, so after a resume over fewer of them), and the final weights, bit for bit.
    cut = (stopped // 10 + 1) * 10
    assert {s: v for s, v in losses(out).items() if s != cut} == {s: v for s, v in losses(base).items() if s != cut}
    assert weights(out) == weights(base)
    runs = {path.name.rsplit("-", 1)[1] for path in (out / "wandb").glob("offline-run-*")}
    assert runs == {(out / "wandb" / "run-id").read_text()}  # one W&B run, continued
    assert not processes_of(out)


@pytest.mark.slow
def test_scancel_stops_the_run_with_a_checkpoint_and_leaves_no_process(slurm, tmp_path):
    out = tmp_path / "cancelled"
    flags = demo_flags(out)
    flags[flags.index("--max_steps") + 1] = "100000"
    job = submit(slurm, tmp_path, "cancelled", flags)
    wait_for("a first checkpoint", lambda: (out / "checkpoint-20" / "trainer_state.json").is_file(), 300, 0.5)
    subprocess.run(["scancel", job], env=slurm, check=True)
    wait_for("the job to end", lambda: job_state(slurm, job) in ("CANCELLED", "GONE"), 120, 1)
    wait_for("no process of the run", lambda: not processes_of(out), 90, 1)
    node = (tmp_path / f"cancelled-{job}-node0.log").read_text()
    assert "Stopped on SIGTERM after step" in node, node[-3000:]
    assert job_state(slurm, job) != "PENDING"  # cancelled, not requeued


# SkyPilot: the task's run script as each node runs it, and the task through SkyPilot's own loader and schema.
SKYPILOT_TASK = ROOT / "launch" / "skypilot.yaml"


def test_each_skypilot_node_runs_make_train_with_its_rank_resuming_whatever_is_in_the_bucket(tmp_path):
    """The `run` script on node 1 of 2 (8 GPUs each), with a `make` on PATH that records its arguments; those
    arguments, given to the real Makefile (make -n), launch the recipe with this node's rank."""
    import yaml

    task = yaml.safe_load(SKYPILOT_TASK.read_text())
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "make").write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > {tmp_path}/args\n')
    (fake / "make").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"} | {k: str(v) for k, v in task["envs"].items() if v}
    env |= {"SKYPILOT_NUM_NODES": "2", "SKYPILOT_NODE_RANK": "1", "SKYPILOT_NODE_IPS": "10.0.0.5\n10.0.0.6"}
    env |= {"SKYPILOT_NUM_GPUS_PER_NODE": "8", "ACCELERATE_CONFIG": "accelerate_configs/fsdp.yaml"}
    subprocess.run(["bash", "-c", task["run"]], env=env, check=True, timeout=60)
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:3] == ["train", "RECIPE=burberry_lora", "ACCELERATE_CONFIG=accelerate_configs/fsdp.yaml"]
    assert "RESUME=auto" in args and "ARGS=--output_dir /outputs/burberry_lora " in args
    launch = next(arg for arg in args if arg.startswith("LAUNCH_ARGS="))
    assert launch.split() == [
        "LAUNCH_ARGS=--num_machines", "2", "--machine_rank", "1", "--num_processes", "16",
        "--main_process_ip", "10.0.0.5", "--main_process_port", "29500",
    ]  # fmt: skip
    planned = subprocess.run(
        ["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, env=os.environ | {"MAKEFLAGS": ""}
    )
    command = " ".join(planned.stdout.replace("\\\n", " ").split())
    assert (
        "phi3v-recipe launch --config_file accelerate_configs/fsdp.yaml --num_machines 2 --machine_rank 1" in command
    )
    assert "--config recipes/burberry_lora.yaml --resume_from_checkpoint auto --output_dir /outputs/burberry_lora" in (
        command
    )


SKYPILOT_CHECK = """
import copy, sys, yaml
import sky
config = yaml.safe_load(open(sys.argv[1]))
for nodes in (1, 2):
    task = sky.Task.from_yaml_config(
        copy.deepcopy(config) | {"num_nodes": nodes}, env_overrides=[("OUTPUT_BUCKET", "phi3v-runs")],
        secrets_overrides=[("HF_TOKEN", "hf_x"), ("WANDB_API_KEY", "x")],
    )
    resources = list(task.resources)
    assert task.num_nodes == nodes and resources and all(r.use_spot for r in resources)
    assert {r.job_recovery["strategy"] for r in resources} == {"EAGER_NEXT_REGION"}
    storage = task.storage_mounts["/outputs"]
    assert storage.name == "phi3v-runs" and storage.mode.name == "MOUNT_CACHED", (storage.name, storage.mode)
try:
    sky.Task.from_yaml_config(copy.deepcopy(config))
    raise SystemExit("a task without OUTPUT_BUCKET was accepted")
except ValueError as err:
    assert "OUTPUT_BUCKET" in str(err), err
broken = copy.deepcopy(config)
broken["resources"]["use_spot"] = "yes"
try:
    sky.Task.from_yaml_config(broken, env_overrides=[("OUTPUT_BUCKET", "b")])
    raise SystemExit("the schema let use_spot: 'yes' through")
except Exception as err:
    assert "use_spot" in str(err), err
print("skypilot", sky.__version__, "accepts the task")
"""


@pytest.mark.slow
def test_skypilot_loads_the_task_with_its_own_loader_and_schema(tmp_path_factory):
    """SkyPilot in a throwaway environment (its pins are not ours), no cloud: the task for 1 and 2 nodes, its
    required bucket, and a broken copy that its schema refuses (so the check can fail)."""
    venv = tmp_path_factory.mktemp("skypilot") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [str(venv / "bin/pip"), "install", "--quiet", "skypilot"], capture_output=True, text=True, timeout=900
    )
    if install.returncode:
        pytest.skip(f"SkyPilot could not be installed here: {install.stderr.strip().splitlines()[-1:]}")
    done = subprocess.run(
        [str(venv / "bin/python"), "-c", SKYPILOT_CHECK, str(SKYPILOT_TASK)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path_factory.mktemp("sky-home"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(done.stdout)
