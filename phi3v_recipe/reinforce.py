"""The stage after SFT: GRPO with the recipe's own metric as the reward (recipe key ``stage: grpo``).

The rows are the recipe's, prepared and checked as for SFT; each becomes a prompt (the conversation before its last
answer, with its images) and the truth that ``evaluate`` scores that answer against. TRL's ``GRPOTrainer`` samples
``num_generations`` answers per prompt with transformers' ``generate`` (the model's KV cache and image inputs) and
rewards each: ``metric`` scores it as ``evaluate`` does (``evaluate.row_score``: a template's fields, exact match,
ANLS or a label); ``format`` is 1 when it parses; ``module:function`` is a function of your own, called as TRL calls
reward functions (``prompts``, ``completions``, the row as ``row``), returning one float per completion.
"""

import importlib
import json
import statistics

from .answers import as_label, parse_answer
from .arguments import template_fields
from .errors import UserError

UNPARSED = 0.0  # the reward of an answer the recipe cannot read: it scores nothing, as evaluate counts it a miss


def text_of_completion(completion) -> str:
    """A completion's text: conversational (a list holding the assistant's message) or plain."""
    if isinstance(completion, list):
        content = completion[-1]["content"]
        if isinstance(content, list):
            return "".join(part.get("text", "") for part in content)
        return content
    return completion


def metric_reward_of(recipe, answer: str, row: dict) -> float:
    """One answer's reward under the recipe's metric, in [0, 1], from the scorer evaluate uses (``row_score``):
    template: the mean over the fields of the text fields' token F1 and of 1 for a number within 10% (the metrics
    evaluate reports per field); ANLS as is; exact match and labels 1 or 0. An answer that does not parse: 0."""
    from .evaluate import row_score, token_f1

    metric = recipe.scoring()
    if metric != "template":
        return float(row_score(recipe, answer, row))
    parsed = parse_answer(answer, recipe.answer_template)
    if parsed is None:
        return UNPARSED
    results = row_score(recipe, answer, row)
    scores = []
    for name in template_fields(recipe.answer_template):
        if name in recipe.numeric_fields:
            error, truth = results[name], abs(float(row[name]))
            scores.append(float(error is not None and truth != 0 and error / truth <= 0.10))
        else:
            scores.append(token_f1(parsed[name] or "", str(row[name])))
    return statistics.fmean(scores)


def parses(recipe, answer: str) -> bool:
    """Whether the recipe can read the answer: its template filled in, or one of its labels."""
    metric = recipe.scoring()
    if metric == "template":
        return parse_answer(answer, recipe.answer_template) is not None
    if metric == "accuracy":
        return as_label(answer, recipe.labels) is not None
    return bool(answer.strip())


def reward_functions(recipe) -> list:
    """The recipe's rewards as TRL's GRPOTrainer calls them; each named as it is logged (rewards/NAME/mean)."""

    def metric(prompts, completions, row, **kwargs) -> list[float]:
        return [metric_reward_of(recipe, text_of_completion(c), json.loads(r)) for c, r in zip(completions, row)]

    def format(prompts, completions, **kwargs) -> list[float]:  # noqa: A001 (logged as rewards/format)
        return [float(parses(recipe, text_of_completion(c))) for c in completions]

    functions = []
    for name in recipe.rewards:
        if name == "metric":
            functions.append(metric)
        elif name == "format":
            functions.append(format)
        else:
            functions.append(user_function(name))
    return functions


def user_function(spec: str):
    """``module:function`` imported (from the working directory too), or a one-line error naming what is missing."""
    import sys

    module_name, _, function_name = spec.partition(":")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"rewards: {spec!r}: cannot import {module_name} ({err}).") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UserError(f"rewards: {spec!r}: {module_name} has no function {function_name}.")
    return function


def grpo_rows(rows, recipe):
    """Prepared rows as GRPO prompts: ``prompt`` (the turns before the last answer), ``images`` (opened when a row
    is read: PIL images are never copied into the dataset) and ``row`` (what the reward scores against, as JSON)."""
    from .collator import open_images
    from .conversation import prompt_messages

    fields = template_fields(recipe.answer_template) if recipe.scoring() == "template" else []
    truth_columns = [*fields, "answers"]

    def as_prompt(row: dict) -> dict:
        truth = {name: row[name] for name in truth_columns if name in row}
        return {"prompt": prompt_messages(row["messages"]), "image_paths": row["images"], "row": json.dumps(truth)}

    prompts = rows.map(as_prompt, remove_columns=rows.column_names, desc="GRPO prompts")

    def with_images(batch: dict) -> dict:
        return batch | {"images": [open_images(paths) for paths in batch["image_paths"]]}

    prompts.set_transform(with_images)
    return prompts
