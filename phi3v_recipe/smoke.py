"""A recipe's smoke run: two optimizer steps on the CPU with the recipe's own model, LoRA, quantization, crop and
training settings, on its family's tiny random model and its task's synthetic twin data, in seconds. The recipe runs
end to end (data checks, collation, the model, LoRA or QLoRA, the optimizer, saving) before a GPU is rented.

    phi3v-recipe smoke --config recipes/burberry_lora.yaml [--key value ...]      (make smoke RECIPE=burberry_lora)

What changes: the model is the tiny one of the recipe's family (``make tiny``), the data keys are those of the task's
twin recipe (the same format and columns, on the synthetic set of ``make sample-data``), and the run stays on the CPU
for 2 steps of one batch (no gradient accumulation), without evaluation, scoring, checkpoints, W&B or push. The
recipe that runs is written to ``outputs/smoke/<recipe>.yaml`` and printed.
"""

import dataclasses
import sys
from pathlib import Path

from .arguments import DataArguments
from .errors import UserError, run
from .recipe_file import config_path, read_recipe

# The demo_* recipe whose data stands in for each GPU recipe's (a demo recipe stands in for itself).
TWINS = {
    "burberry_lora": "demo",
    "burberry_qlora": "demo",
    "burberry_full_fsdp": "demo",
    "phi35v_burberry_lora": "demo",
    "docvqa_lora": "demo_docvqa",
    "nlvr2_lora": "demo_nlvr2",
    "ucf101_lora": "demo_ucf101",
    "llava_instruct_lora": "demo_llava",
    "phi4mm_burberry_lora": "demo_phi4mm",
    "phi4mm_docvqa_lora": "demo_docvqa",
    "burberry_grpo": "demo",
    "docvqa_grpo": "demo_docvqa",
}
# What a smoke run sets over the recipe: the CPU, 2 steps of one batch, nothing but the training and the save.
SMOKE = {
    "use_cpu": True,
    "bf16": False,
    "max_steps": 2,
    "gradient_accumulation_steps": 1,
    "max_rows": 40,
    "eval_strategy": "no",
    "save_strategy": "no",
    "scored_evaluation": False,
    "report_to": ["none"],
    "push_to_hub": False,
    "dataloader_num_workers": 0,
    "overwrite_output_dir": True,
    "model_revision": "main",
}


def twin_data(path: Path) -> tuple[str, dict] | None:
    """(name, data keys) of the synthetic twin of the recipe at ``path`` (a demo recipe is its own), or None."""
    name = path.stem if path.stem.startswith("demo") else TWINS.get(path.stem)
    if name is None:
        return None
    twin = read_recipe(str(path.with_name(f"{name}.yaml")), None)
    return name, {
        key: value for key, value in twin.items() if key in {f.name for f in dataclasses.fields(DataArguments)}
    }


def smoke_recipe(path: Path) -> dict:
    """The recipe at ``path`` with its twin's data keys, its family's tiny model and the smoke run's settings."""
    from .families import BY_NAME, FAMILIES

    recipe = read_recipe(str(path), None)  # its keys are checked by the run's own parse
    twin = twin_data(path)
    if twin is None:
        raise UserError(
            f"{path} has no synthetic twin (smoke runs the shipped recipes: {', '.join(TWINS)}). For a recipe of "
            "yours: phi3v-recipe train --config ... --max_steps 2 --scored_evaluation false --max_rows 40."
        )
    data_keys = {f.name for f in dataclasses.fields(DataArguments)}
    family = next((f for f in FAMILIES.values() if recipe.get(f.CROP_KEY) is not None), BY_NAME["phi3v"])
    model = Path("outputs") / f"tiny-{family.NAME}"
    if not (model / "config.json").is_file():
        raise UserError(f"{model} does not exist: make it with `make tiny` (or phi3v-recipe tiny {model}).")
    kept = {k: v for k, v in recipe.items() if k not in data_keys}
    smoke = kept | twin[1] | SMOKE
    if smoke.get("sft_adapter"):  # a new LoRA on the tiny model stands in for the SFT adapter of the real model
        smoke |= {"sft_adapter": None, "use_peft": True}
    return smoke | {"model_name_or_path": str(model), "output_dir": str(Path("outputs") / "smoke" / path.stem)}


def main(argv: list[str] | None = None):
    import yaml

    argv = list(sys.argv[1:] if argv is None else argv)
    path = config_path(argv)
    if path is None:
        raise UserError("say which recipe: phi3v-recipe smoke --config recipes/NAME.yaml [--key value ...]")
    recipe = smoke_recipe(Path(path))
    written = Path("outputs") / "smoke" / f"{Path(path).stem}.yaml"
    written.parent.mkdir(parents=True, exist_ok=True)
    written.write_text(f"# {path}, as a smoke run (phi3v_recipe/smoke.py)\n" + yaml.safe_dump(recipe, sort_keys=False))
    print(f"Smoke run of {path}: {written}")
    from .train import main as train

    rest = [arg for arg in argv if arg not in ("--config", path) and not arg.startswith("--config=")]
    return train(["--config", str(written), *rest])


if __name__ == "__main__":
    run(main)
