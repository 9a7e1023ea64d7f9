"""Scored evaluation: generate the last assistant turn of each eval conversation and score it with the recipe's metric.

    python -m phi3v_recipe.evaluate --config recipes/X.yaml [--adapter DIR_OR_REPO] [--max_samples N]

Metrics (``metric`` in the recipe):
- ``template``: every field of the answer template is graded. Text fields get exact-match accuracy and token F1
  (Burberry: category accuracy, title exact match / F1); numeric fields get MAE and median absolute percentage error
  over parsed answers, and the share within 10% over all answers (an unparseable answer counts as a miss).
- ``exact_match``: the answer equals one of the references (case, surrounding spaces and a final period ignored).
- ``anls``: the standard DocVQA average normalised Levenshtein similarity, threshold 0.5, best over the references.
- ``accuracy``: the answer read as one of the recipe's ``labels`` equals the true label (unparseable = miss).

Printed side by side with the trivial baseline (train median / majority value, most common answer or label) and
with the base model as it ships (the adapter off). Writes metrics.json and predictions.jsonl.
"""

import json
import statistics
import sys
from collections import Counter
from pathlib import Path

from .answers import as_label, format_number, normalize, parse_answer, parse_number
from .arguments import template_fields
from .errors import ArgumentParser, UserError, run


def token_f1(prediction: str, truth: str) -> float:
    pred, gold = prediction.lower().split(), truth.lower().split()
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def field_result(guess: str | None, truth, numeric: bool):
    """A numeric field's absolute error (None when the guess is no number); for a text field, whether the guess
    equals the truth (case-insensitive)."""
    if numeric:
        number = parse_number(guess) if guess is not None else None
        return None if number is None else abs(number - float(truth))
    return guess is not None and guess.lower() == str(truth).strip().lower()


def score(predictions: list[dict | None], truths: list[dict], fields: list[str], numeric_fields: list[str]) -> dict:
    """Metrics of parsed predictions (None = unparseable) against the true field values."""
    n = len(truths)
    metrics = {"parse_rate": sum(p is not None for p in predictions) / n}
    for name in fields:
        results = [
            field_result(p[name] if p else None, t[name], name in numeric_fields) for p, t in zip(predictions, truths)
        ]
        if name in numeric_fields:
            errors = [e for e in results if e is not None]
            pct = [e / abs(float(t[name])) for e, t in zip(results, truths) if e is not None and float(t[name]) != 0]
            metrics[f"{name}_mae"] = statistics.fmean(errors) if errors else None  # None: nothing parsed
            metrics[f"{name}_mdape"] = statistics.median(pct) if pct else None
            metrics[f"{name}_within_10pct"] = sum(e <= 0.10 for e in pct) / n
        else:
            metrics[f"{name}_accuracy"] = sum(results) / n
            metrics[f"{name}_token_f1"] = statistics.fmean(
                token_f1(p[name], str(t[name])) if p else 0.0 for p, t in zip(predictions, truths)
            )
    return metrics


def baseline_predictions(train_rows: list[dict], n: int, fields: list[str], numeric_fields: list[str]) -> list[dict]:
    """The trivial answer for every row: the train median of numeric fields, the most common value of the others."""
    guess = {}
    for name in fields:
        values = [row[name] for row in train_rows]
        if name in numeric_fields:
            guess[name] = format_number(statistics.median(float(format_number(v)) for v in values))
        else:
            guess[name] = str(Counter(str(v).strip() for v in values).most_common(1)[0][0])
    return [dict(guess) for _ in range(n)]


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions)."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def anls(prediction: str, references: list[str], threshold: float = 0.5) -> float:
    """ANLS of one answer (DocVQA): 1 - normalised edit distance to the closest reference, 0 at or beyond the
    threshold. Compared in lower case with spaces collapsed, as the DocVQA evaluation does."""
    pred = " ".join(prediction.lower().split())
    best = 0.0
    for reference in references:
        ref = " ".join(str(reference).lower().split())
        distance = levenshtein(pred, ref) / max(len(pred), len(ref), 1)
        best = max(best, 1 - distance if distance < threshold else 0.0)
    return best


def row_score(recipe, answer: str, row: dict):
    """One answer's result under the recipe's metric (per field for the template metric)."""
    metric = recipe.scoring()
    if metric == "template":
        found = parse_answer(answer, recipe.answer_template)
        fields = template_fields(recipe.answer_template)
        return {
            name: field_result(found.get(name) if found else None, row[name], name in recipe.numeric_fields)
            for name in fields
        }
    if metric == "anls":
        return anls(answer, row["answers"])
    if metric == "accuracy":
        return as_label(answer, recipe.labels) == as_label(row["answers"][0], recipe.labels)
    return any(normalize(answer) == normalize(reference) for reference in row["answers"])


def score_answers(recipe, answers: list[str], rows: list[dict]) -> dict:
    """Metrics of the answers to ``rows`` under the recipe's metric."""
    metric = recipe.scoring()
    if metric == "template":
        fields = template_fields(recipe.answer_template)
        truths = [{name: row[name] for name in fields} for row in rows]
        parsed = [parse_answer(answer, recipe.answer_template) for answer in answers]
        return score(parsed, truths, fields, recipe.numeric_fields)
    metrics = {}
    if metric == "accuracy":
        metrics["parse_rate"] = statistics.fmean(as_label(a, recipe.labels) is not None for a in answers)
    results = [row_score(recipe, answer, row) for answer, row in zip(answers, rows)]
    metrics[metric] = statistics.fmean(float(result) for result in results)
    if metric == "anls":
        metrics["exact_match"] = statistics.fmean(
            any(normalize(a) == normalize(r) for r in row["answers"]) for a, row in zip(answers, rows)
        )
    return metrics


def baseline_answer(recipe, train_rows: list[dict]) -> tuple[str, str]:
    """(the trivial answer, what it is): train median / most common value per template field, the majority label,
    or the most common answer."""
    metric = recipe.scoring()
    if metric == "template":
        fields = template_fields(recipe.answer_template)
        guess = baseline_predictions(train_rows, 1, fields, recipe.numeric_fields)[0]
        return recipe.answer_template.format(**guess), "train median / most common value per field"
    if metric == "accuracy":
        labels = [as_label(row["answers"][0], recipe.labels) for row in train_rows]
        majority = Counter(label for label in labels if label is not None).most_common(1)
        return (majority[0][0] if majority else recipe.labels[0]), "the majority label"
    answers = Counter(row["answers"][0] for row in train_rows)
    return answers.most_common(1)[0][0], "the most common train answer"


def format_table(columns: dict[str, dict]) -> str:
    """Metrics side by side: one row per metric, one column per system."""
    names = list(columns)
    metrics = list(next(iter(columns.values())))
    width = max(len(m) for m in metrics)
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{n:>14}" for n in names)]
    for metric in metrics:
        cells = []
        for name in names:
            value = columns[name].get(metric)
            cells.append(f"{'-':>14}" if value is None else f"{value:>14.4g}")
        lines.append(f"{metric:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def evaluate(
    model,
    processor,
    eval_rows,
    train_rows,
    recipe,
    output_dir,
    base_model_context=None,
    batch_size: int = 8,
    max_new_tokens: int = 64,
) -> dict:
    """Score ``model`` on ``eval_rows`` (and, given ``base_model_context``, the base model as it ships);
    print the table; write predictions.jsonl and metrics.json into ``output_dir``; return the metrics written
    (``eval_*`` for the model, ``base_model_*`` and ``baseline_*`` for the others)."""
    from .generation import generate_answers

    answers = generate_answers(model, processor, eval_rows, max_new_tokens, batch_size)
    columns = {"model": score_answers(recipe, answers, eval_rows)}
    if base_model_context is not None:
        with base_model_context():
            base_answers = generate_answers(model, processor, eval_rows, max_new_tokens, batch_size)
        columns["base model"] = score_answers(recipe, base_answers, eval_rows)
    trivial, what = baseline_answer(recipe, train_rows)
    columns["baseline"] = score_answers(recipe, [trivial] * len(eval_rows), eval_rows)
    print(f"Scored evaluation ({recipe.scoring()}) on {len(eval_rows)} rows (baseline: {what}, {trivial!r}):")
    print(format_table(columns))

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = [row_score(recipe, answer, row) for answer, row in zip(answers, eval_rows)]
    with (out / "predictions.jsonl").open("w") as f:
        for row, answer, result in zip(eval_rows, answers, results):
            record = {"images": row["images"], "truth": row["answers"][0], "references": row["answers"]}
            f.write(json.dumps(record | {"prediction": answer, "score": result}) + "\n")
    scored = {f"eval_{k}": v for k, v in columns["model"].items()}
    scored |= {
        f"{name.replace(' ', '_')}_{k}": v for name in columns if name != "model" for k, v in columns[name].items()
    }
    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    metrics_path.write_text(json.dumps(metrics | scored, indent=2) + "\n")
    from .plots import log_to_wandb, plot_data, write_pngs

    plots = plot_data(recipe, answers, eval_rows)
    write_pngs(plots, out)
    if _log_to_wandb(columns["model"], eval_rows, answers, results):
        log_to_wandb(plots)
    return scored


def _log_to_wandb(metrics, rows, answers, results) -> bool:
    """Log the metrics and the predictions table to the current W&B run; whether there was one."""
    try:
        import wandb
    except ImportError:
        return False
    if wandb.run is None:
        return False
    wandb.log({f"eval/{k}": v for k, v in metrics.items()})
    table = wandb.Table(columns=["image", "truth", "prediction", "score"])
    for row, answer, result in zip(rows, answers, results):
        table.add_data(wandb.Image(row["images"][0]), row["answers"][0], answer, json.dumps(result))
    wandb.log({"eval/scored_predictions": table})
    return True


def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(description="Scored evaluation of an adapter on a recipe's eval split.")
    parser.add_argument(
        "--adapter", default=None, help="Adapter folder or Hub repo (default: the recipe's output_dir)."
    )
    parser.add_argument("--base", default=None, help="Base model (default: the one named in the adapter's config).")
    parser.add_argument("--max_samples", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument(
        "--metrics_dir", default=None, help="Where metrics.json / predictions.jsonl go (default: ADAPTER/eval)."
    )
    parser.add_argument("--skip_base", action="store_true", help="Do not also score the base model.")
    own, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    from .recipe_file import precheck

    ours = tuple(action.dest for action in parser._actions if action.dest != "help")
    precheck(rest, also=ours)  # the recipe's and flags' mistakes, before TRL and torch are imported

    from .config import parse_recipe
    from .data import prepare_data
    from .families import family_of_processor
    from .predict import load_for_inference
    from .recipe_file import config_path

    recipe, training_args, model_args = parse_recipe(rest)
    adapter = own.adapter or training_args.output_dir
    if own.adapter is None and not Path(adapter).is_dir():
        raise UserError(
            f"{adapter} (the recipe's output_dir) does not exist: this recipe has not been trained here yet. Train "
            f"it first (phi3v-recipe train --config {config_path(rest)}), or pass --adapter FOLDER_OR_HUB_ID."
        )
    crops = recipe.num_crops if recipe.num_crops is not None else recipe.dynamic_hd  # the family's key, as trained
    model, processor = load_for_inference(adapter, own.base, num_crops=crops)
    data = prepare_data(recipe, processor, training_args.max_length, training_args.dataset_num_proc)
    recipe = data.args  # the format and columns resolved
    if data.eval is None:
        raise UserError("The recipe has no eval split (eval_fraction is 0 and no eval_split): set one.")
    eval_rows = data.eval.to_list()[: own.max_samples]
    output_dir = own.metrics_dir or (str(Path(adapter) / "eval") if Path(adapter).is_dir() else "outputs/eval")
    shipped = family_of_processor(processor).as_shipped
    context = None if own.skip_base or not hasattr(model, "disable_adapter") else shipped(model)
    metrics = evaluate(
        model,
        processor,
        eval_rows,
        data.train.to_list(),
        recipe,
        output_dir,
        context,
        own.batch_size,
        own.max_new_tokens,
    )
    print(f"Wrote {output_dir}/metrics.json and {output_dir}/predictions.jsonl")
    return metrics


if __name__ == "__main__":
    run(main)
