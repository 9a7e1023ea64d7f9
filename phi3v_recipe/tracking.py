"""Weights & Biases: offline when there is no key, and a table of generated answers at each evaluation."""

import netrc
import os
from pathlib import Path

from transformers import TrainerCallback

from .generation import generate_answers

USERS_RUN_ID = os.environ.get("WANDB_RUN_ID")  # a W&B run id the user chose is kept; else each run sets its own


def wandb_has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def configure_wandb(report_to: list[str], output_dir: str, resumed: bool = False, main: bool = True) -> bool:
    """Set W&B up for this run; returns whether it reports to W&B. Runs are stored under ``output_dir/wandb``. A
    resumed run (after a stop, a preemption, a requeued job) continues the W&B run it began: its id is kept in
    ``output_dir/wandb/run-id``, which the main process (the one that logs) writes."""
    if "wandb" not in report_to or os.environ.get("WANDB_MODE") == "disabled":
        return False
    os.environ.setdefault("WANDB_DIR", output_dir)
    os.makedirs(os.environ["WANDB_DIR"], exist_ok=True)
    if main and USERS_RUN_ID is None:
        os.environ["WANDB_RUN_ID"] = wandb_run_id(output_dir, resumed)
        os.environ["WANDB_RESUME"] = "allow"
    # W&B keeps the media of logged tables (their images) in an artifact whose files it stages under WANDB_DATA_DIR,
    # by default ~/.local/share/wandb: outside the run folder, so an offline run copied elsewhere (or a container's
    # HOME thrown away) syncs its tables without images. Staged beside the run, they travel with it.
    os.environ.setdefault("WANDB_DATA_DIR", os.path.join(os.environ["WANDB_DIR"], "wandb"))
    if os.environ.get("WANDB_MODE") == "offline" or not wandb_has_key():
        os.environ["WANDB_MODE"] = "offline"
        print(
            f"W&B: offline (no API key, or WANDB_MODE=offline); the run is saved under {os.environ['WANDB_DIR']}/wandb. "
            f"Upload it later with: wandb sync {os.environ['WANDB_DIR']}/wandb/offline-run-*"
        )
    return True


def wandb_run_id(output_dir: str, resumed: bool) -> str:
    """The W&B run id of this output folder's run: the one it began with when resumed, else a new one (kept)."""
    import secrets

    from .files import write_atomically

    kept = Path(output_dir) / "wandb" / "run-id"
    if resumed and kept.is_file():
        return kept.read_text().strip()
    run_id = secrets.token_hex(4)
    kept.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(kept, run_id)
    return run_id


class PredictionTableCallback(TrainerCallback):
    """At each evaluation, generate answers for a few eval rows and log them as a `wandb.Table`."""

    def __init__(self, processor, rows: list[dict], max_new_tokens: int = 64):
        self.processor = processor
        self.rows = rows
        self.max_new_tokens = max_new_tokens

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or not self.rows:
            return
        import wandb

        if wandb.run is None:
            return
        answers = generate_answers(model, self.processor, self.rows, self.max_new_tokens)
        table = wandb.Table(columns=["step", "image", "truth", "prediction"])
        for row, answer in zip(self.rows, answers):
            table.add_data(state.global_step, wandb.Image(row["images"][0]), row["answers"][0], answer)
        wandb.log({"eval/predictions": table, "train/global_step": state.global_step})
