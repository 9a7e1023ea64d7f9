"""A recipe on a SLURM cluster: what ``launch/slurm.sbatch`` runs, checked before it is queued and run once per node.

    python -m phi3v_recipe.slurm check RECIPE [ACCELERATE_CONFIG] [--key value ...]   the recipe file, or one error line
    python -m phi3v_recipe.slurm node RECIPE [ACCELERATE_CONFIG] [--key value ...]    (in a job) this node's launch

``node`` becomes ``phi3v-recipe launch`` with what the job says: one machine per node (``SLURM_JOB_NUM_NODES``), this
node's rank (``SLURM_NODEID``), the job's first node as the main process, a port drawn from the job id (two jobs on one
node never meet), and processes per node from the GPUs SLURM gave the node (``SLURM_GPUS_ON_NODE``), or
``PROCESSES_PER_NODE`` when set (CPU nodes). It always resumes from the newest complete checkpoint of the output folder
when there is one (``--resume_from_checkpoint auto``): a requeued job continues by itself.
"""

import os
import re
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from .errors import UserError, run
from .recipe_file import precheck, recipes_here

DEFAULT_ACCELERATE_CONFIG = "accelerate_configs/multi_gpu.yaml"
USAGE = "launch/slurm.sbatch RECIPE [ACCELERATE_CONFIG] [--key value ...]"


def first_host(nodelist: str) -> str:
    """The first host of a SLURM host list: ``gpu[07-09,12],cpu1`` -> ``gpu07`` (what ``scontrol show hostnames``
    prints first, without needing scontrol on the node)."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise UserError(f"SLURM_JOB_NODELIST={nodelist!r} names no host.")
    prefix, ranges = match.groups()
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def processes_per_node(env: Mapping[str, str]) -> int:
    """The training processes one node runs: PROCESSES_PER_NODE when set, else the GPUs SLURM gave this node."""
    for name in ("PROCESSES_PER_NODE", "SLURM_GPUS_ON_NODE"):
        if env.get(name):
            return int(env[name])
    raise UserError(
        "The job has no GPUs (SLURM_GPUS_ON_NODE is unset): ask for them (sbatch --gpus-per-node 8), or set "
        "PROCESSES_PER_NODE to the processes each node runs."
    )


def launch_args(env: Mapping[str, str]) -> list[str]:
    """``accelerate launch`` flags for this node of the job described by ``env`` (SLURM's variables)."""
    nodes = int(env.get("SLURM_JOB_NUM_NODES") or env["SLURM_NNODES"])
    port = env.get("MAIN_PROCESS_PORT") or str(20000 + int(env["SLURM_JOB_ID"]) % 20000)
    return [
        "--num_machines", str(nodes),
        "--machine_rank", env["SLURM_NODEID"],
        "--num_processes", str(nodes * processes_per_node(env)),
        "--main_process_ip", first_host(env["SLURM_JOB_NODELIST"]),
        "--main_process_port", port,
    ]  # fmt: skip


def recipe_and_config(argv: list[str]) -> tuple[str, str, list[str]]:
    """(the recipe file, the accelerate config, the recipe flags) from ``RECIPE [ACCELERATE_CONFIG] [--key ...]``;
    the recipe is a name (burberry_lora) or a file."""
    if not argv or argv[0].startswith("-"):
        raise UserError(f"say which recipe: {USAGE}. Recipes: {', '.join(recipes_here())}.")
    recipe, rest = argv[0], argv[1:]
    if not Path(recipe).is_file():
        recipe = f"recipes/{Path(recipe).stem}.yaml"
    config = DEFAULT_ACCELERATE_CONFIG
    if rest and not rest[0].startswith("-"):
        config, rest = rest[0], rest[1:]
    if not Path(config).is_file():
        configs = ", ".join(sorted(str(p) for p in Path("accelerate_configs").glob("*.yaml")))
        raise UserError(f"The accelerate config {config} does not exist. Configs: {configs}.")
    return recipe, config, rest


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("check", "node"):
        raise UserError("usage: python -m phi3v_recipe.slurm check|node RECIPE [ACCELERATE_CONFIG] [--key value ...]")
    recipe, config, flags = recipe_and_config(argv[1:])
    precheck(["--config", recipe, *flags])  # the recipe's and flags' mistakes, in one line, before anything starts
    if argv[0] == "check":
        print(recipe)
        return
    launcher = [*launch_args(os.environ), *shlex.split(os.environ.get("ACCELERATE_ARGS", ""))]
    command = [str(Path(sys.executable).parent / "phi3v-recipe"), "launch", "--config_file", config, *launcher]
    command += ["--config", recipe, "--resume_from_checkpoint", "auto", *flags]
    print(f"Node {os.environ['SLURM_NODEID']} of job {os.environ['SLURM_JOB_ID']}: {shlex.join(command)}", flush=True)
    os.execv(command[0], command)  # the launch is this task: SLURM's signals reach it directly


if __name__ == "__main__":
    run(main)
