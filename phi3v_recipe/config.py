"""Recipes: YAML files whose keys map 1:1 onto TRL's `SFTConfig`, TRL's `ModelConfig` and our `RecipeArguments`.

Parsed with TRL's `TrlParser`; command-line flags override the YAML. An unknown or misspelled key is an error that
names the key (and the closest known one) before anything is loaded.
"""

import difflib
import sys
from dataclasses import dataclass, field, fields

from trl import ModelConfig, SFTConfig, TrlParser

from .data import DataArguments


@dataclass
class RecipeArguments(DataArguments):
    """Our own recipe keys: the data (see DataArguments) plus what is specific to Phi-3-Vision."""

    num_crops: int | None = field(
        default=None,
        metadata={
            "help": "Max HD crops per image (1-16; the model card advises 16 single-image, 4 multi-image). "
            "Default: the checkpoint's preprocessor_config.json."
        },
    )
    freeze_vision_tower: bool = field(
        default=True, metadata={"help": "Keep the CLIP vision tower frozen (LoRA on the language model by default)."}
    )
    predictions_to_log: int = field(
        default=8, metadata={"help": "Eval samples whose generated answers are logged as a table at each evaluation."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.num_crops is not None and not 1 <= self.num_crops <= 16:
            raise ValueError(
                f"num_crops must be between 1 and 16 (as in the official fine-tuning), got {self.num_crops}."
            )


def _known_keys(dataclass_types) -> set[str]:
    return {f.name for cls in dataclass_types for f in fields(cls)} | {"env"}


def parse_recipe(argv: list[str] | None = None) -> tuple[RecipeArguments, SFTConfig, ModelConfig]:
    """Parse ``--config recipe.yaml [--key value ...]`` into (recipe, training, model) arguments."""
    types = (RecipeArguments, SFTConfig, ModelConfig)
    parser = TrlParser(types)
    args = list(sys.argv[1:] if argv is None else argv)
    if "--config" in args:
        import yaml

        path = args[args.index("--config") + 1]
        with open(path) as f:
            recipe = yaml.safe_load(f) or {}
        known = _known_keys(types)
        for key in recipe:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise ValueError(
                    f"Unknown key '{key}' in {path}.{hint} Every key must be a field of SFTConfig, "
                    "ModelConfig or RecipeArguments."
                )
    recipe_args, training_args, model_args = parser.parse_args_and_config(args)
    if training_args.trust_remote_code:
        raise ValueError("trust_remote_code must stay false: phi3v_recipe ships a native Phi-3-Vision.")
    if model_args.model_name_or_path is None:
        raise ValueError(
            "model_name_or_path is required (a Hub id like microsoft/Phi-3-vision-128k-instruct, or a folder)."
        )
    return recipe_args, training_args, model_args
