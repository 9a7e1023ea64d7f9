"""Recipes: YAML files whose keys map 1:1 onto TRL's `SFTConfig`, TRL's `ModelConfig` and our `RecipeArguments`.

Parsed with TRL's `TrlParser`; command-line flags override the YAML (full names only: abbreviations are refused).
Everything that can be checked without loading a model is checked here, before anything is loaded: unknown or
misspelled keys and flags (naming the closest known one), YAML syntax (file, line, column), types and ranges, and a
model folder that does not exist. Each problem is a one-line ``UserError``.
"""

import difflib
import functools
from dataclasses import fields
from pathlib import Path

from trl import DPOConfig, GRPOConfig, ModelConfig, SFTConfig, TrlParser

from . import recipe_file
from .arguments import RecipeArguments
from .errors import UserError
from .hub import HUB_ID
from .recipe_file import NULL, config_path

TRAINING = {
    "sft": SFTConfig,
    "grpo": GRPOConfig,
    "dpo": DPOConfig,
}  # each stage's trainer configuration (recipe key `stage`)
TYPES = (RecipeArguments, SFTConfig, ModelConfig)  # what an SFT recipe (the default stage) is parsed into


def types_for(stage: str) -> tuple:
    return (RecipeArguments, TRAINING[stage], ModelConfig)


DTYPES = ("auto", "bfloat16", "float16", "float32")
CLIP_LINEARS = {
    "q_proj",
    "k_proj",
    "v_proj",
    "out_proj",
    "fc1",
    "fc2",
}  # the vision tower's layers (the decoder has none)
ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


@functools.cache
def known_keys() -> set[str]:
    """Every recipe key; kept with the kind of value each takes for the next precheck (recipe_file.py), which runs
    before TRL is imported."""
    kinds = {f.name: {} for stage in TRAINING for cls in types_for(stage) for f in fields(cls)} | {"env": {}}
    for stage in TRAINING:
        kinds |= {key: kind for key, kind in value_kinds(RecipeParser(stage)).items() if key in kinds}
    if recipe_file.cached_kinds() != kinds:
        recipe_file.save_kinds(kinds)
    return set(kinds)


def value_kinds(parser: TrlParser) -> dict[str, dict]:
    """key -> what the parser converts its value with: {"type": "int" | "float" | "bool"} or {"choices": [...]}, and
    "many" for a list. Only the key's own flag counts (not HfArgumentParser's --no_KEY)."""
    kinds = {}
    for action in parser._actions:
        if f"--{action.dest}" not in action.option_strings:
            continue
        kind = {}
        if action.choices:
            kind["choices"] = [str(choice) for choice in action.choices]
        elif action.type in (int, float):
            kind["type"] = action.type.__name__
        elif getattr(action.type, "__name__", "") == "string_to_bool":  # transformers' or TRL's copy of it
            kind["type"] = "bool"
        if action.nargs in ("+", "*"):
            kind["many"] = True
        kinds[action.dest] = kind
    return kinds


def read_recipe(path: str) -> dict:
    """The recipe file as a mapping; a missing file, a YAML syntax error or an unknown key is a one-line error."""
    return recipe_file.read_recipe(path, known_keys())


class RecipeParser(TrlParser):
    """TrlParser whose errors are one line (not a usage dump) and that takes no abbreviated flags."""

    def __init__(self, stage: str = "sft"):
        super().__init__(types_for(stage), allow_abbrev=False)

    def error(self, message):
        raise UserError(f"{message} (phi3v-recipe train --help lists the keys).")


def check_flags(args: list[str]) -> None:
    """Every ``--flag`` is a recipe key (or --config), spelled out in full; never ``--hub_token``."""
    recipe_file.check_flags(args, known_keys() - {"env"})


def check_model_path(name: str) -> None:
    """A model that names a local folder must be one (with a config.json); anything else must read as a Hub id."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(
                f"model_name_or_path={name!r} is a folder without config.json: not a model in the hub layout."
            )
        return
    if not HUB_ID.match(name):  # owner/name, starting with a letter or digit: never ./, / or ~
        raise UserError(
            f"model_name_or_path={name!r}: no such folder, and not a Hub id (owner/name). Make the tiny model with "
            "`make tiny`, or give a Hub id like microsoft/Phi-3-vision-128k-instruct."
        )


def check_values(recipe: RecipeArguments, training: SFTConfig, model: ModelConfig) -> None:
    """Types and ranges of TRL's keys (YAML values skip argparse's checks), before anything is loaded."""
    if model.model_name_or_path is None:
        raise UserError(
            "model_name_or_path is required (a Hub id like microsoft/Phi-3-vision-128k-instruct, or a folder)."
        )
    check_model_path(model.model_name_or_path)
    if getattr(training, "trust_remote_code", False):
        raise UserError("trust_remote_code must stay false: phi3v_recipe ships a native Phi-3-Vision.")
    if model.dtype not in (None, *DTYPES):
        raise UserError(f"dtype={model.dtype!r} is not one of {', '.join(DTYPES)}.")
    if model.attn_implementation not in (None, *ATTENTION):
        raise UserError(f"attn_implementation={model.attn_implementation!r} is not one of {', '.join(ATTENTION)}.")
    recipe_file.check_ranges(vars(training) | vars(model))
    if model.use_peft and "lm_head" in (model.lora_target_modules or []):
        raise UserError(
            "lora_target_modules holds lm_head, which TRL refuses: its loss reads lm_head.weight directly, so an adapter "
            "there would never train. Remove it, or train the head in full with lora_modules_to_save: [lm_head]."
        )
    if model.use_peft and not recipe.freeze_vision_tower and not set(model.lora_target_modules or []) & CLIP_LINEARS:
        print(
            "Note: freeze_vision_tower=false changes nothing under LoRA with these targets: only adapted modules "
            f"train. To adapt the vision tower, add CLIP's layers to lora_target_modules ({', '.join(sorted(CLIP_LINEARS))})."
        )
    if training.max_steps <= 0 and training.num_train_epochs <= 0:
        raise UserError(
            f"max_steps={training.max_steps} and num_train_epochs={training.num_train_epochs}: the run would train "
            "0 steps. Set num_train_epochs > 0 or max_steps > 0."
        )
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    valid = {*INTEGRATION_TO_CALLBACK, "all", "none"}
    for name in training.report_to or []:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UserError(f"report_to: {name!r} is not a logging integration.{hint} Use [wandb], or [none].")


def no_gpu(recipe_path: str, how: str = "") -> UserError:
    """A GPU recipe on a machine without one: said with the way out."""
    return UserError(
        f"{recipe_path} trains{how} on a GPU, and this machine has none. Use recipes/demo.yaml (make demo), or run it "
        "on the CPU (slowly) with --use_cpu true --bf16 false."
    )


def take_nulls(args: list[str]) -> tuple[list[str], dict]:
    """``--key null`` for one of our keys that may be unset (``image_column``) or emptied (``numeric_fields``), so that
    a recipe's value can be cleared from the command line: the flags without those, and key -> None or []."""
    clearable = recipe_file.clearable_keys()
    kept, cleared, i = [], {}, 0
    while i < len(args):
        key, _, value = args[i][2:].partition("=")
        if not value and i + 1 < len(args):
            value = args[i + 1]
        if args[i].startswith("--") and key in clearable and value.lower() in NULL:
            cleared[key] = clearable[key]
            i += 1 if "=" in args[i] else 2
            continue
        kept.append(args[i])
        i += 1
    return kept, cleared


def stage_of(recipe: dict, args: list[str]) -> str:
    """The recipe's stage: its --stage flag, else its file's, else sft."""
    stage = recipe.get("stage", "sft")
    for i, arg in enumerate(args):
        if arg.startswith("--stage="):
            stage = arg.split("=", 1)[1]
        elif arg == "--stage" and i + 1 < len(args):
            stage = args[i + 1]
    if stage not in TRAINING:
        raise UserError(f"stage={stage!r} is not one of {', '.join(TRAINING)}.")
    return stage


def check_stage_keys(stage: str, keys: set[str]) -> None:
    """A key of another stage's trainer (num_generations in an SFT recipe) is one line naming its stage."""
    here = {f.name for cls in types_for(stage) for f in fields(cls)} | {"env", "config"}
    for other in TRAINING:
        foreign = sorted((keys - here) & {f.name for f in fields(TRAINING[other])})
        if foreign:
            raise UserError(
                f"{', '.join(foreign)}: key(s) of stage {other} ({TRAINING[other].__name__}), and this recipe's stage is "
                f"{stage}: set stage: {other}, or remove them."
            )


def parse_recipe(argv: list[str]) -> tuple[RecipeArguments, SFTConfig, ModelConfig]:
    """Parse ``--config recipe.yaml [--key value ...]`` into (recipe, training, model) arguments, all checked.
    ``--key null`` clears one of our optional or list keys."""
    import dataclasses

    args, cleared = take_nulls(list(argv))
    path = config_path(args)
    given = {}
    if path is not None:
        given = read_recipe(path)
        args = [a for a in args if not a.startswith("--config=")]
        if "--config" not in args:
            args = ["--config", path, *args]
    check_flags(args)
    stage = stage_of(given, args)
    check_stage_keys(stage, set(given) | {a[2:].split("=")[0] for a in args if a.startswith("--")})
    try:
        recipe, training, model = RecipeParser(stage).parse_args_and_config(args)
    except UserError:
        raise
    except ValueError as err:  # TrainingArguments' own checks of the values given
        message = str(err)
        if "support bf16/gpu" in message:
            raise no_gpu(path or "This recipe", " in bf16") from None
        raise UserError(f"{path or 'recipe'}: {message}") from None
    recipe = dataclasses.replace(recipe, **cleared)  # checked again by its __post_init__
    check_values(recipe, training, model)
    return recipe, training, model
