"""Synthetic sample sets, drawn offline and deterministically, whose answers are learnable from the pixels.

    python -m phi3v_recipe.synthetic --task burberry --rows 3040 --seed 0 --out data/sample
    python -m phi3v_recipe.synthetic --task docvqa --out data/sample/docvqa      # or nlvr2, frames, messages, all

- ``burberry``: the reference task's columns (``burberry.csv``): name, category and price from a product photo.
- ``docvqa``: documents with rendered text, a question per row, several reference answers (ANLS).
- ``nlvr2``: two images, true/false statements about them, two turns (the_cauldron's ``images`` + ``texts``).
- ``frames``: short clips as lists of frames whose motion is the label (video classification).
- ``messages``: TRL's conversational format (``messages`` + ``images``), multi-turn, one or two images.
"""

from pathlib import Path

from ..errors import ArgumentParser
from .burberry import Product, write_sample_set
from .docvqa import write_docvqa_set
from .frames import write_frames_set
from .messages import write_messages_set
from .nlvr2 import write_nlvr2_set

WRITERS = {
    "burberry": (write_sample_set, 3040),
    "docvqa": (write_docvqa_set, 400),
    "nlvr2": (write_nlvr2_set, 300),
    "frames": (write_frames_set, 200),
    "messages": (write_messages_set, 300),
}

__all__ = ["WRITERS", "Product", "write_sample_set", "write_task"]


def write_task(task: str, out_dir: str | Path, rows: int | None = None, seed: int = 0) -> Path:
    """Write one task's sample set into ``out_dir``; returns its data file."""
    writer, default_rows = WRITERS[task]
    return writer(out_dir, rows=rows or default_rows, seed=seed)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Write a synthetic sample set (images + a CSV / JSONL file).")
    parser.add_argument("--task", choices=[*WRITERS, "all"], default="burberry")
    parser.add_argument("--rows", type=int, default=None, help="Rows to draw (default: per task, see --help).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        default="data/sample",
        help="Output folder; with --task all, each task other than burberry goes into a subfolder named after it.",
    )
    args = parser.parse_args(argv)
    tasks = list(WRITERS) if args.task == "all" else [args.task]
    for task in tasks:
        out = Path(args.out) / task if args.task == "all" and task != "burberry" else Path(args.out)
        path = write_task(task, out, args.rows, args.seed)
        print(f"Wrote the {task} sample set to {path}")
