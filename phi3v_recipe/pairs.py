"""Preference pairs for ``stage: dpo``: read (one row per image prompt: its images, the prompt, a chosen and a rejected
answer) and built from a trained model's own samples, best against worst by the recipe's metric.

    phi3v-recipe pairs --config recipes/demo.yaml --adapter outputs/demo --out data/pairs.jsonl [--samples 4]

``pairs`` samples ``--samples`` answers (temperature 1) to every training row of the recipe, scores each with the
reward ``stage: grpo`` uses (``reinforce.metric_reward_of``: the metric as ``evaluate`` scores it), and writes the best
as chosen and the worst as rejected, for the rows whose answers score differently (a row whose samples all score
alike teaches no preference and is left out). Rows of several turns are left out too (a pair is one prompt).

A pairs file (JSONL, CSV or Parquet, or a Hub dataset) has ``images`` (a list of paths relative to the file, or to
``image_root``; or ``image``: one path), ``prompt``, ``chosen`` and ``rejected`` (text). Every row is checked as the
SFT rows are (images readable and not over ``max_image_pixels``, texts not empty, chosen and rejected differing); bad
rows are skipped and listed in ``skipped_rows.csv``.
"""

import json
import random
from pathlib import Path

from .errors import ArgumentParser, UserError, run

COLUMNS = ("prompt", "chosen", "rejected")


def read_pairs(recipe):
    """The recipe's pairs file as TRL's DPOTrainer reads it (a conversational prompt with its image slots, chosen
    and rejected assistant turns, ``images`` decoded when read), split as the recipe says: a ``PreparedData``."""
    import datasets

    from .data import BadRow, PreparedData
    from .data.checks import check_image

    source = Path(recipe.dataset)
    kinds = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
    if source.is_file():
        if source.suffix not in kinds:
            raise UserError(f"dataset={recipe.dataset}: a pairs file is JSONL, CSV or Parquet.")
        table = datasets.load_dataset(kinds[source.suffix], data_files=str(source), split="train")
        root = Path(recipe.image_root or source.parent)
    else:
        table = datasets.load_dataset(recipe.dataset, recipe.dataset_config, split=recipe.dataset_split)
        root = Path(recipe.image_root or ".")
    image_column = recipe.image_column or next((c for c in ("images", "image") if c in table.column_names), None)
    missing = [c for c in COLUMNS if c not in table.column_names] + ([] if image_column else ["images"])
    if missing:
        raise UserError(
            f"dataset={recipe.dataset} has no column {', '.join(missing)}: a pairs file has images, prompt, chosen "
            f"and rejected (found: {', '.join(table.column_names)})."
        )
    kept, skipped = [], []
    for index, row in enumerate(table):
        if recipe.max_rows is not None and index >= recipe.max_rows:
            break
        try:
            kept.append(pair_row(row, image_column, root, recipe.max_image_pixels, check_image))
        except BadRow as err:
            skipped.append((index, str(row.get(recipe.id_column, index)), err))
    if not kept:
        raise UserError(f"No pairs left in {recipe.dataset} after the checks ({len(skipped)} skipped).")
    pairs = datasets.Dataset.from_list(kept).cast_column("images", datasets.Sequence(datasets.Image()))
    if recipe.eval_fraction > 0 and len(pairs) > 1:
        split = pairs.train_test_split(test_size=recipe.eval_fraction, seed=recipe.split_seed)
        return PreparedData(split["train"], split["test"], skipped, recipe)
    return PreparedData(pairs, None, skipped, recipe)


def pair_row(row: dict, image_column: str, root: Path, max_pixels: int, check_image) -> dict:
    """One checked pair in TRL's conversational form (BadRow when it cannot be trained on)."""
    from .data import BadRow

    images = row[image_column]
    images = images.split(";") if isinstance(images, str) else list(images or [])  # a CSV cell: ";" between paths
    if not images:
        raise BadRow("no image")
    paths = [str(path if Path(path).is_absolute() else root / path) for path in images]
    for path in paths:
        check_image(path, max_pixels)
    texts = {name: row[name] for name in COLUMNS}
    for name, text in texts.items():
        if not isinstance(text, str) or not text.strip():
            raise BadRow(f"empty {name}")
    if texts["chosen"].strip() == texts["rejected"].strip():
        raise BadRow("chosen equals rejected")
    content = [{"type": "image"} for _ in paths] + [{"type": "text", "text": texts["prompt"]}]
    return {
        "images": paths,
        "prompt": [{"role": "user", "content": content}],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": texts["chosen"]}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": texts["rejected"]}]}],
    }


def best_and_worst(answers: list[str], rewards: list[float]) -> tuple[str, str] | None:
    """(chosen, rejected): the best and the worst scored answers, or None when they score alike."""
    best = max(range(len(answers)), key=lambda i: rewards[i])
    worst = min(range(len(answers)), key=lambda i: rewards[i])
    return None if rewards[best] == rewards[worst] else (answers[best], answers[worst])


def main(argv: list[str] | None = None) -> Path:
    import sys

    parser = ArgumentParser(description="Preference pairs from a trained model's own samples, scored by the metric.")
    parser.add_argument("--adapter", required=True, help="The trained output (folder or Hub id) that samples.")
    parser.add_argument("--out", required=True, help="The pairs file to write (JSONL).")
    parser.add_argument("--samples", type=int, default=4, help="Answers sampled per row (best against worst).")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=8, help="Rows per generation batch.")
    own, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    from .recipe_file import precheck

    precheck(rest, also=tuple(action.dest for action in parser._actions if action.dest != "help"))
    out = Path(own.out)
    if own.samples < 2:
        raise UserError(f"--samples must be at least 2 (a best and a worst), got {own.samples}.")
    if out.exists():
        raise UserError(f"{out} exists: write the pairs to a new file.")
    import torch
    from tqdm import tqdm

    from .config import parse_recipe
    from .data import prepare_data
    from .generation import generate_new_tokens
    from .predict import load_for_inference
    from .reinforce import metric_reward_of

    recipe, training, model_args = parse_recipe(rest)
    crops = recipe.num_crops if recipe.num_crops is not None else recipe.dynamic_hd
    model, processor = load_for_inference(own.adapter, None, num_crops=crops)
    data = prepare_data(recipe, processor, getattr(training, "max_length", None), None)
    recipe = data.args
    rows = [row for row in data.train.to_list() if sum(m["role"] == "user" for m in row["messages"]) == 1]
    torch.manual_seed(training.seed)
    random.seed(training.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = alike = 0
    from .collator import open_images
    from .conversation import prompt_messages, text_of

    with out.open("w") as file, tqdm(total=len(rows), desc="Sampling answers", unit="row") as bar:
        for start in range(0, len(rows), own.batch_size):
            chunk = rows[start : start + own.batch_size]
            conversations = [prompt_messages(row["messages"]) for row in chunk for _ in range(own.samples)]
            images = [open_images(row["images"]) for row in chunk for _ in range(own.samples)]
            new = generate_new_tokens(
                model, processor, conversations, images, own.max_new_tokens,
                sampling={"do_sample": True, "temperature": own.temperature},
            )  # fmt: skip
            answers = [text.strip() for text in processor.batch_decode(new, skip_special_tokens=True)]
            for i, row in enumerate(chunk):
                mine = answers[i * own.samples : (i + 1) * own.samples]
                rewards = [metric_reward_of(recipe, answer, row) for answer in mine]
                pair = best_and_worst(mine, rewards)
                if pair is None:
                    alike += 1
                    continue
                prompt = text_of(prompt_messages(row["messages"])[-1])
                file.write(
                    json.dumps(
                        {
                            "images": [str(Path(p).resolve()) for p in row["images"]],
                            "prompt": prompt,
                            "chosen": pair[0],
                            "rejected": pair[1],
                            "chosen_reward": max(rewards),
                            "rejected_reward": min(rewards),
                        }
                    )
                    + "\n"
                )
                written += 1
            bar.update(len(chunk))
    print(
        f"Wrote {written} pairs to {out} ({alike} rows whose {own.samples} samples all scored alike were left out, "
        f"{len(data.train) - len(rows)} rows of several turns too)."
    )
    return out


if __name__ == "__main__":
    run(main)
