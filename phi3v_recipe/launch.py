"""Train through Accelerate's launcher (several processes, GPUs or machines), with the run's own errors as they are.

    phi3v-recipe launch --config_file accelerate_configs/multi_gpu.yaml [accelerate launch flags] \
        --config recipes/NAME.yaml [--key value ...]

The same as ``accelerate launch --quiet [flags] -m phi3v_recipe.train --config ...``, but a user error of the run (a
recipe value, a claimed or finished output folder, a missing file) stays one line with exit status 2. Accelerate
reports any failed process itself after that line (with one process a CalledProcessError traceback, with several a
summary table and torch's log lines) and exits 1: here every training process writes its user error to a folder the
launch names (``PHI3V_ERRORS_DIR``) instead of printing it, and the launch prints it alone, once. Ctrl-C and SIGTERM
reach the training processes, which stop at the end of their step with a checkpoint; the launch waits for them.
"""

import os
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from .errors import ERRORS_DIR, UserError, debugging, run
from .recipe_file import split_at_config
from .runs import RESUME_COMMAND, same_run

USAGE = "phi3v-recipe launch [accelerate launch flags] --config recipes/NAME.yaml [--key value ...]"


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(accelerate's flags, the recipe's): the recipe's start at ``--config`` (``--config_file`` is accelerate's)."""
    launcher, recipe = split_at_config(argv)
    if not recipe:
        raise UserError(f"say which recipe: {USAGE}")
    return launcher, recipe


def resume_command(launcher: list[str], recipe: list[str]) -> str:
    """This launch again, resuming: what an interrupted run prints."""
    phi3v_recipe = str(Path(sys.executable).parent / "phi3v-recipe")
    return shlex.join([phi3v_recipe, "launch", *launcher, *same_run(recipe), "--resume_from_checkpoint", "true"])


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv in (["-h"], ["--help"]):
        print(f"usage: {USAGE}\n\n{__doc__.split(chr(10) + chr(10))[2]}")
        return
    launcher, recipe = split_argv(argv)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", *launcher]
    command += ["-m", "phi3v_recipe.train", *recipe]
    env = os.environ | ({"PHI3V_DEBUG": "1"} if debugging(sys.argv) else {})  # run() took --debug out of argv
    env.setdefault(RESUME_COMMAND, resume_command(launcher, recipe))  # make train sets its own
    with tempfile.TemporaryDirectory(prefix="phi3v-launch-") as errors:
        process = subprocess.Popen(command, env=env | {ERRORS_DIR: errors}, stderr=subprocess.PIPE)
        # Ctrl-C reaches every process of the terminal's group: the launcher and the training processes handle it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signum))
        said, last = False, b"\n"
        while chunk := process.stderr.read1(1 << 16):
            said = said or any(Path(errors).iterdir())  # past a user error, only the launcher's report of it follows
            if not said:
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
                last = chunk[-1:]
        process.wait()
        messages = [file.read_text() for file in sorted(Path(errors).iterdir())]
    if messages:
        if last != b"\n":  # a progress bar was being drawn
            print(file=sys.stderr)
        raise UserError(messages[0])
    if process.returncode:
        raise SystemExit(process.returncode)


if __name__ == "__main__":
    run(main)
