"""Plots of a scored evaluation: a confusion matrix per categorical field (or over the labels), predicted against
true per numeric field. Written as PNG files into ``OUT/plots`` and, during a W&B run, logged with W&B's own plot
helpers."""

from collections import Counter
from pathlib import Path

from .answers import as_label, format_number, parse_answer, parse_number
from .arguments import template_fields

MAX_CLASSES = 20  # a field with more distinct true values (titles) is not a confusion matrix a person can read
UNPARSED = "(unparsed)"


def plot_data(recipe, answers: list[str], rows: list[dict]) -> dict[str, dict]:
    """{name: {"kind": "confusion", "truth": [...], "predicted": [...]} or {"kind": "scatter", "pairs": [...]}}."""
    metric = recipe.scoring()
    if metric == "accuracy":
        predicted = [as_label(answer, recipe.labels) or UNPARSED for answer in answers]
        truth = [as_label(row["answers"][0], recipe.labels) for row in rows]
        return {"labels": {"kind": "confusion", "truth": truth, "predicted": predicted}}
    if metric != "template":
        return {}
    parsed = [parse_answer(answer, recipe.answer_template) for answer in answers]
    plots = {}
    for name in template_fields(recipe.answer_template):
        truth = [row[name] for row in rows]
        guesses = [found.get(name) if found else None for found in parsed]
        if name in recipe.numeric_fields:
            pairs = [(float(format_number(t)), parse_number(g)) for t, g in zip(truth, guesses) if g is not None]
            plots[name] = {"kind": "scatter", "pairs": [(t, p) for t, p in pairs if p is not None]}
        elif len(Counter(str(t).strip() for t in truth)) <= MAX_CLASSES:
            predicted = [g.strip() if g else UNPARSED for g in guesses]
            plots[name] = {"kind": "confusion", "truth": [str(t).strip() for t in truth], "predicted": predicted}
    return plots


def classes(plot: dict) -> list[str]:
    return sorted(set(plot["truth"])) + sorted(set(plot["predicted"]) - set(plot["truth"]))


def write_pngs(plots: dict[str, dict], out_dir: str | Path) -> list[Path]:
    """One PNG per plot in ``out_dir/plots``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(out_dir) / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, plot in plots.items():
        figure, axes = plt.subplots(figsize=(6, 5))
        if plot["kind"] == "confusion":
            names = classes(plot)
            index = {c: i for i, c in enumerate(names)}
            counts = [[0] * len(names) for _ in names]
            for t, p in zip(plot["truth"], plot["predicted"]):
                counts[index[t]][index[p]] += 1
            axes.imshow(counts, cmap="Blues")
            axes.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
            axes.set_yticks(range(len(names)), names, fontsize=8)
            for i, row in enumerate(counts):
                for j, value in enumerate(row):
                    if value:
                        axes.text(j, i, str(value), ha="center", va="center", fontsize=8)
            axes.set_xlabel("predicted")
            axes.set_ylabel("true")
            axes.set_title(f"{name}: confusion matrix")
        else:
            truth = [t for t, _ in plot["pairs"]]
            predicted = [p for _, p in plot["pairs"]]
            axes.scatter(truth, predicted, s=12)
            if truth:
                low, high = min(truth + predicted), max(truth + predicted)
                axes.plot([low, high], [low, high], color="grey", linewidth=1)  # where a perfect answer lies
            axes.set_xlabel(f"true {name}")
            axes.set_ylabel(f"predicted {name}")
            axes.set_title(f"{name}: predicted against true ({len(truth)} parsed)")
        figure.tight_layout()
        path = folder / f"{name}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def log_to_wandb(plots: dict[str, dict]) -> None:
    """The same plots with W&B's plot helpers (a confusion matrix, a scatter plot)."""
    import wandb

    for name, plot in plots.items():
        if plot["kind"] == "confusion":
            names = classes(plot)
            chart = wandb.plot.confusion_matrix(
                y_true=[names.index(t) for t in plot["truth"]],
                preds=[names.index(p) for p in plot["predicted"]],
                class_names=names,
                title=f"{name}: confusion matrix",
            )
        else:
            table = wandb.Table(
                data=[list(pair) for pair in plot["pairs"]], columns=[f"true {name}", f"predicted {name}"]
            )
            chart = wandb.plot.scatter(table, f"true {name}", f"predicted {name}", title=f"{name}: predicted vs true")
        wandb.log({f"eval/plots/{name}": chart})


def write_reward_curve(log_history: list[dict], out_dir: str | Path) -> Path | None:
    """GRPO's mean reward per logged step (each reward function's, and their sum) as ``out_dir/plots/reward.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [entry for entry in log_history if "reward" in entry and "step" in entry]
    if not entries:
        return None
    names = sorted({key for entry in entries for key in entry if key.startswith("rewards/") and key.endswith("/mean")})
    figure, axes = plt.subplots(figsize=(6, 4))
    steps = [entry["step"] for entry in entries]
    axes.plot(steps, [entry["reward"] for entry in entries], label="reward (sum)", linewidth=2)
    for name in names if len(names) > 1 else []:
        axes.plot(steps, [entry.get(name) for entry in entries], label=name.split("/")[1])
    axes.set_xlabel("step")
    axes.set_ylabel("mean reward of the sampled answers")
    axes.set_title("GRPO: mean reward per logged step")
    axes.legend()
    figure.tight_layout()
    folder = Path(out_dir) / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "reward.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
