"""One mode in a fresh process, timed step by step; the memory of its process tree sampled from outside."""

import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import UserError
from .baselines import BUILDERS


def step_timer(cuda: bool):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Times between consecutive step ends: each step's data wait, forward, backward and optimiser step."""

        marks: list[float] = []
        cpu: list[float] = []  # CPU seconds of this process and its DataLoader workers, at the same marks

        def on_train_begin(self, args, state, control, **kwargs):
            if cuda:
                import torch

                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            self.marks, self.cpu = [time.perf_counter()], [tree_cpu_seconds()]

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                import torch

                torch.cuda.synchronize()
            self.marks.append(time.perf_counter())
            self.cpu.append(tree_cpu_seconds())

    return StepTimer()


def tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live children (DataLoader workers): unlike wall time, what
    other work on a busy machine takes does not count in it."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def status_mb(field: str) -> float:
    """A memory field of this process's /proc/self/status (in kB there), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def vm_hwm_mb() -> float:
    """This process's peak resident set, in MiB."""
    return status_mb("VmHWM")


def run_mode(spec: dict) -> dict:
    """One mode, in this (fresh) process: build its trainer, train, time the steps after the warm-up."""
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    cuda = spec["device"] == "cuda"
    trainer = BUILDERS[spec["mode"]](spec)
    timer = step_timer(cuda)
    trainer.add_callback(timer)
    output = trainer.train()
    steps = [b - a for a, b in zip(timer.marks, timer.marks[1:])][spec["warmup"] :]
    cpu = timer.cpu[-1] - timer.cpu[spec["warmup"]]
    batch = 1 if spec["mode"] == "guide" else spec["batch_size"]
    result = {
        "mode": spec["mode"],
        "batch_size": batch,
        "step_seconds": steps,
        "samples_per_s_median_step": batch / statistics.median(steps),
        "samples_per_s_wall": batch * len(steps) / sum(steps),
        "cpu_s_per_sample": cpu / (batch * len(steps)),
        "main_peak_mb": vm_hwm_mb(),
        "per_device_batch": trainer.args.per_device_train_batch_size,
        "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "train_loss": output.training_loss,
    }
    if cuda:
        result["gpu_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu_peak_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    return result


@contextlib.contextmanager
def tree_peak_memory(pid: int):
    """While inside: the peak memory of process ``pid`` and all its descendants, sampled every 50 ms in a thread, as
    ``tree_peak_pss_mb`` (each process's PSS, summed: a page shared between processes, such as what a forked worker
    shares with its parent, counts once) and ``tree_peak_rss_sum_mb`` (RSS summed: shared pages counted in each)."""
    import psutil

    peak = {"tree_peak_pss_mb": 0.0, "tree_peak_rss_sum_mb": 0.0}
    done = threading.Event()

    def sample():
        root = psutil.Process(pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            pss = rss = 0
            for process in tree:
                try:
                    memory = process.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                pss, rss = pss + memory.pss, rss + memory.rss
            peak["tree_peak_pss_mb"] = max(peak["tree_peak_pss_mb"], pss / 2**20)
            peak["tree_peak_rss_sum_mb"] = max(peak["tree_peak_rss_sum_mb"], rss / 2**20)
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()


def run_child(spec: dict, work: Path) -> dict:
    """Run one mode in a fresh process while sampling the memory of its process tree."""
    spec_file = work / f"spec-{spec['mode']}-{spec['batch_size']}-{spec['repeat']}.json"
    spec_file.write_text(json.dumps(spec))
    env = os.environ | {"OMP_NUM_THREADS": str(spec["threads"]), "TOKENIZERS_PARALLELISM": "false"}
    child = subprocess.Popen(
        [sys.executable, "-m", "phi3v_recipe.bench", "--run", str(spec_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        with tree_peak_memory(child.pid) as peak:
            stdout, stderr = child.communicate(timeout=spec["timeout"])
    except subprocess.TimeoutExpired:  # a hang ends the bench with its mode named, not a wait without end
        child.kill()
        child.communicate()
        raise UserError(
            f"bench mode {spec['mode']} ran past --timeout {spec['timeout']:g} s and was stopped: give it longer "
            "(--timeout), or look for what hangs by running that mode alone (--modes)."
        ) from None
    line = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
    if child.returncode != 0 or not line:
        if "out of memory" in stderr.lower():
            return {"mode": spec["mode"], "batch_size": spec["batch_size"], "repeat": spec["repeat"], "oom": True}
        raise RuntimeError(f"bench mode {spec['mode']} failed:\n{stderr[-4000:]}")
    return json.loads(line[-1][7:]) | peak | {"repeat": spec["repeat"]}
