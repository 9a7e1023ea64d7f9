"""A run on disk: an output folder holds one run, its checkpoints are complete or absent, and a resume continues the
same run.

- ``run_recipe.json`` in the output folder is the resolved recipe of the run that owns it (no secrets). A fresh run
  refuses a folder that holds another run unless told to overwrite it; a resume refuses a folder whose run had a
  different recipe, naming the keys that differ.
- Checkpoints are written aside (``.checkpoint-staging``) and renamed into place when complete, so a kill or a full
  disk during a save leaves the older checkpoints as they were. A resume picks the newest complete checkpoint and
  says which, and why it skipped any other.
"""

import json
import os
import shlex
import shutil
import sys
import zipfile
from pathlib import Path

from .errors import UserError
from .files import write_atomically

RECIPE_FILE = "run_recipe.json"
STAGING = ".checkpoint-staging"
# Keys a resumed run may change: how it is launched, logged, saved or pushed, and how long it trains.
MAY_CHANGE_ON_RESUME = {
    "resume_from_checkpoint",
    "overwrite_output_dir",
    "max_steps",
    "num_train_epochs",
    "logging_steps",
    "logging_dir",
    "eval_steps",
    "save_steps",
    "save_total_limit",
    "report_to",
    "run_name",
    "disable_tqdm",
    "dataloader_num_workers",
    "push_to_hub",
    "hub_model_id",
    "hub_private_repo",
    "predictions_to_log",
    "scored_evaluation",
    "output_dir",
    "local_rank",
}
WEIGHTS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")
# What a run leaves once it has trained: a folder with only its run_recipe.json (a run that failed or was stopped
# before its first checkpoint, on a bad dataset path say) holds nothing to lose, and a fresh run takes it over.
RUN_FILES = (*WEIGHTS, "trainer_state.json", "metrics.json")


def snapshot(recipe, training, model) -> dict:
    """The run's settings as JSON values: every key of ours, of the model and of training (secrets masked)."""
    import dataclasses

    values = dataclasses.asdict(recipe) | dataclasses.asdict(model) | training.to_dict()
    return {k: v for k, v in json.loads(json.dumps(values, default=str)).items() if "token" not in k}


def holds_a_run(out: Path) -> bool:
    return out.is_dir() and (any((out / name).exists() for name in RUN_FILES) or any(out.glob("checkpoint-*")))


def damage(file: Path) -> str | None:
    """Why a checkpoint file cannot be read whole (cut short by a kill, a full disk or a copy), or None. Reads only
    headers: a safetensors file's header and its length, a torch file's zip directory (at its end), a JSON file."""
    size = file.stat().st_size
    try:
        if file.suffix == ".safetensors":
            with file.open("rb") as f:
                length = int.from_bytes(f.read(8), "little")
                if size < 8 or 8 + length > size:
                    return f"{file.name} is cut short in its header ({size} bytes)"
                header = json.loads(f.read(length))
            end = 8 + length + max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
            if end != size:
                return f"{file.name} holds {size} bytes where its header says {end}"
        elif file.suffix in (".pt", ".pth", ".bin"):
            with zipfile.ZipFile(file) as archive:
                last = max(archive.infolist(), key=lambda info: info.header_offset, default=None)
                if last is not None and last.header_offset + last.compress_size > size:
                    return f"{file.name} is cut short"
        elif file.suffix == ".json":
            json.loads(file.read_text())
    except (ValueError, KeyError, TypeError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        return f"{file.name} cannot be read ({type(err).__name__}: {str(err)[:100]})"
    return None


def damaged_files(path: Path) -> list[str]:
    """Why each damaged file of a checkpoint folder cannot be read (``damage``)."""
    return [why for file in sorted(path.iterdir()) if file.is_file() and (why := damage(file))]


def checkpoint_problems(path: Path, save_only_model: bool = False) -> list[str]:
    """What a checkpoint folder lacks to be resumed from, or which of its files are damaged (an empty list: it is
    complete)."""
    return damaged_files(path) + missing_files(path, save_only_model)


def missing_files(path: Path, save_only_model: bool) -> list[str]:
    """What a checkpoint folder lacks to be resumed from."""
    problems = []
    if not (path / "trainer_state.json").is_file():
        problems.append("no trainer_state.json")
    # Under FSDP with SHARDED_STATE_DICT the weights and optimizer are folders of shards (torch.distributed.checkpoint,
    # its .metadata written last), named as Accelerate's save_fsdp_model / save_fsdp_optimizer name them.
    if (
        not any((path / name).is_file() for name in WEIGHTS)
        and not (path / "pytorch_model_fsdp_0/.metadata").is_file()
    ):
        problems.append("no weights")
    if not save_only_model:
        if not (path / "optimizer.pt").is_file() and not (path / "optimizer_0/.metadata").is_file():
            problems.append("no optimizer.pt")
        if not (path / "scheduler.pt").is_file():
            problems.append("no scheduler.pt")
    return problems


def checkpoint_step(path: Path) -> int:
    try:
        return int(path.name.split("-")[-1])
    except ValueError:
        return -1


def has_complete_checkpoint(out: Path, save_only_model: bool = False) -> bool:
    """Whether ``out`` holds a checkpoint a run can resume from."""
    return any(p.is_dir() and not checkpoint_problems(p, save_only_model) for p in out.glob("checkpoint-*"))


def newest_complete_checkpoint(out: Path, save_only_model: bool = False, say: bool = True) -> Path:
    """The newest complete ``checkpoint-N`` in ``out``, saying (``say``) why any newer one was passed over."""
    checkpoints = sorted((p for p in out.glob("checkpoint-*") if p.is_dir()), key=checkpoint_step, reverse=True)
    for path in checkpoints:
        damaged = damaged_files(path)
        problems = damaged + missing_files(path, save_only_model)
        if not problems:
            return path
        if say and damaged:
            aside = path.with_name(f"damaged-{path.name}")  # out of checkpoint-*: never resumed from, nor rotated
            shutil.rmtree(aside, ignore_errors=True)
            path.rename(aside)
            print(f"Moved {path} aside to {aside}: damaged ({'; '.join(problems)}).")
        elif say:
            print(f"Skipping {path}: incomplete ({', '.join(problems)}).")
    raise UserError(
        f"Nothing to resume in {out}: no complete checkpoint-N folder. Start afresh without --resume_from_checkpoint "
        "(add --overwrite_output_dir true if the folder holds a run)."
    )


def resume_if_any(out: Path, resume, save_only_model: bool):
    """``auto``: True (resume) when ``out`` holds a complete checkpoint, else None (start); anything else as it is."""
    if resume != "auto":
        return resume
    return True if out.is_dir() and has_complete_checkpoint(out, save_only_model) else None


def resume_point(out: Path, resume, save_only_model: bool) -> Path | None:
    """The checkpoint another process resumes from, once process 0 has prepared ``out`` (said there, not here)."""
    resume = resume_if_any(out, resume, save_only_model)
    if not resume:
        return None
    return newest_complete_checkpoint(out, save_only_model, say=False) if resume is True else Path(resume)


def check_steps_left(checkpoint: Path, settings: dict) -> None:
    """A resume must have steps left: the Trainer would otherwise train one more step past a finished run and change
    its saved output."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    if settings.get("max_steps", -1) > 0:
        last = settings["max_steps"]
    elif state.get("num_train_epochs") == settings.get("num_train_epochs"):
        last = state.get("max_steps", 0)  # the same epochs: the same number of steps as the run computed
    else:
        return  # more (or fewer) epochs: the Trainer works the steps out
    if state["global_step"] >= last:
        raise UserError(
            f"{checkpoint} is at step {state['global_step']} of {last}: the run is finished, nothing to resume. Raise "
            "--max_steps (or num_train_epochs) to train on from it, or start afresh in another output_dir."
        )


def differences(before: dict, now: dict) -> list[str]:
    keys = sorted((set(before) | set(now)) - MAY_CHANGE_ON_RESUME)
    return [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in keys if before.get(k) != now.get(k)]


def write_json(path: Path, value) -> None:
    write_atomically(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def prepare_output_dir(out: Path, settings: dict, resume, overwrite: bool, save_only_model: bool) -> Path | None:
    """Make ``out`` this run's folder; return the checkpoint to resume from (None for a fresh run)."""
    staging = out / STAGING
    if staging.exists():
        print(f"Removing an unfinished checkpoint save left in {staging} (the run was stopped during a save).")
        shutil.rmtree(staging)
    auto = resume == "auto"
    resume = resume_if_any(out, resume, save_only_model)
    if auto and not resume:
        print(f"No complete checkpoint in {out} to resume from (resume_from_checkpoint: auto): starting the run.")
    if resume:
        recorded = out / RECIPE_FILE
        if recorded.is_file():
            changed = differences(json.loads(recorded.read_text()), settings)
            if changed:
                raise UserError(
                    f"{out} holds a run with another recipe, so it cannot be resumed with this one. Keys that differ: "
                    f"{'; '.join(changed)}. Resume with the same recipe, or start afresh in another output_dir."
                )
        if resume is True:
            path = newest_complete_checkpoint(out, save_only_model)
        else:
            path = Path(resume)
            problems = checkpoint_problems(path, save_only_model) if path.is_dir() else ["no such folder"]
            if problems:
                raise UserError(f"Cannot resume from {path}: {', '.join(problems)}.")
        check_steps_left(path, settings)  # before saying it resumes: a finished run does not
        print(f"Resuming from {path} ({'the newest complete checkpoint' if resume is True else 'as asked'}).")
        return path
    if holds_a_run(out):
        if not overwrite:
            raise UserError(
                f"{out} already holds a run (its adapter, checkpoints or metrics). Resume it with "
                "--resume_from_checkpoint true, start afresh there with --overwrite_output_dir true (deletes it), "
                "or choose another --output_dir."
            )
        if not (out / RECIPE_FILE).is_file():  # only a folder this tool made is emptied wholesale
            raise UserError(
                f"{out} holds results that phi3v-recipe did not write (no {RECIPE_FILE}), so overwrite_output_dir "
                "will not delete them: choose another --output_dir, or empty that folder yourself."
            )
        print(f"Deleting the previous run in {out} (overwrite_output_dir).")
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RECIPE_FILE, settings)
    return None


def same_run(argv: list[str]) -> list[str]:
    """The command's arguments as given, without its resume or overwrite choice."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--resume_from_checkpoint", "--overwrite_output_dir"):
            skip = True
        elif not arg.startswith(("--resume_from_checkpoint=", "--overwrite_output_dir=")):
            kept.append(arg)
    return kept


# Set by the commands that start a run (make demo, make train, phi3v-recipe launch): the command that resumes it.
RESUME_COMMAND = "PHI3V_RESUME_COMMAND"


def resume_command(argv: list[str], processes: int = 1) -> str:
    """The command that resumes this run as the user started it, with the paths that run it from anywhere."""
    if os.environ.get(RESUME_COMMAND):
        return os.environ[RESUME_COMMAND]
    args = shlex.join([*same_run(argv), "--resume_from_checkpoint", "true"])
    bin_dir = Path(sys.executable).parent
    if processes > 1:
        return f"{bin_dir / 'accelerate'} launch [your launch flags] -m phi3v_recipe.train {args}"
    if sys.argv[0].startswith("phi3v-recipe"):  # the phi3v-recipe command names itself so in its messages
        return f"{bin_dir / 'phi3v-recipe'} train {args}"
    return f"{sys.executable} -m phi3v_recipe.train {args}"
