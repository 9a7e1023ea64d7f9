"""The ``phi3v-recipe`` command: one entry point for the pipeline, as ``trl`` and ``accelerate`` have.

    phi3v-recipe train --config recipes/demo.yaml [--learning_rate 1e-4 ...]
    phi3v-recipe prepare | plan | evaluate | predict | push | download | sample-data | tiny | bench | app ...

Each subcommand is the ``python -m phi3v_recipe.<module>`` of the same name with the same flags. ``--help`` answers
before any heavy import; user errors print one line (``--debug`` or ``PHI3V_DEBUG=1`` shows the traceback).
"""

import dataclasses
import difflib
import importlib
import sys

from .errors import UserError, run

COMMANDS = {
    "train": ("phi3v_recipe.train", [], "fine-tune from a recipe (--config recipes/NAME.yaml [--key value ...])"),
    "launch": (
        "phi3v_recipe.launch",
        [],
        "train through accelerate launch (several GPUs or machines): [accelerate flags] --config ...",
    ),
    "smoke": ("phi3v_recipe.smoke", [], "a recipe for 2 steps on the CPU: its tiny model and synthetic twin data"),
    "prepare": ("phi3v_recipe.prepare", [], "check a recipe's rows once, in parallel, for every later run"),
    "plan": (
        "phi3v_recipe.plan",
        [],
        "whether a recipe fits a GPU and how long its rows take, before renting one (--config ... [--gpu H100])",
    ),
    "evaluate": ("phi3v_recipe.evaluate", [], "score an adapter on a recipe's eval split"),
    "pairs": (
        "phi3v_recipe.pairs",
        [],
        "preference pairs for stage: dpo, from a model's own samples scored by the metric",
    ),
    "predict": ("phi3v_recipe.predict", [], "answer questions about images with an adapter (folder or Hub)"),
    "app": ("phi3v_recipe.app", [], "a web page to try an adapter beside its base model (needs .[app])"),
    "push": ("phi3v_recipe.hub", ["push"], "upload a trained output folder to the Hub (or retry an upload)"),
    "download": ("phi3v_recipe.download", [], "fetch a dataset's images by URL into images + CSV"),
    "sample-data": ("phi3v_recipe.synthetic", [], "write the offline synthetic sample sets"),
    "tiny": (
        "phi3v_recipe.tiny",
        [],
        "write a tiny random Phi-3-Vision (or --family phi4mm) checkpoint in the hub layout",
    ),
    "bench": ("phi3v_recipe.bench", [], "benchmarks side by side with the baselines"),
}
# The keys people set most, with a short line each (the full list, with TRL's own help: train --help-all).
TRAINING_KEYS = {
    "output_dir": "where the adapter, checkpoints, metrics and model card go",
    "learning_rate": "peak learning rate",
    "num_train_epochs": "passes over the training rows",
    "max_steps": "stop after this many optimizer steps (overrides num_train_epochs when > 0)",
    "per_device_train_batch_size": "rows per batch on each device",
    "gradient_accumulation_steps": "batches per optimizer step",
    "max_length": "rows with more tokens (text + image tokens) are skipped, never cut",
    "dataset_num_proc": "processes that check the rows (default: every core); the result is kept for every rerun",
    "eval_strategy": "no | steps | epoch",
    "eval_steps": "evaluate every N steps",
    "save_strategy": "no | steps | epoch",
    "save_steps": "checkpoint every N steps",
    "save_total_limit": "keep at most N checkpoints",
    "logging_steps": "log every N steps",
    "bf16": "train in bfloat16 (GPU)",
    "use_cpu": "train on the CPU",
    "report_to": "[wandb] (offline without a key) or [none]",
    "resume_from_checkpoint": "true: continue from the newest complete checkpoint in output_dir",
    "push_to_hub": "push the adapter to hub_model_id at the end",
    "hub_model_id": "owner/name of the model repo to push to",
    "seed": "random seed",
}
MODEL_KEYS = {
    "model_name_or_path": "Hub id (microsoft/Phi-3-vision-128k-instruct) or a folder in the hub layout",
    "dtype": "auto | bfloat16 | float16 | float32",
    "attn_implementation": "sdpa | eager | flash_attention_2 (default: flash-attn when installed, else sdpa)",
    "use_peft": "train a LoRA adapter (false: full fine-tuning)",
    "lora_r": "LoRA rank",
    "lora_alpha": "LoRA alpha",
    "lora_dropout": "LoRA dropout",
    "lora_target_modules": "modules to adapt (default: the language model's qkv/o/gate_up/down projections)",
    "load_in_4bit": "QLoRA: a 4-bit base model (GPU)",
}


def overview() -> str:
    lines = ["usage: phi3v-recipe COMMAND [ARGS ...]  (phi3v-recipe COMMAND --help for its flags)", "", "commands:"]
    lines += [f"  {name:<12} {help_text}" for name, (_, _, help_text) in COMMANDS.items()]
    lines += ["", "--debug (or PHI3V_DEBUG=1) shows the traceback of user errors too."]
    return "\n".join(lines)


def train_help() -> str:
    from .arguments import RecipeArguments

    def rows(items):
        return [f"  --{name:<28} {text}" for name, text in items]

    lines = [
        "usage: phi3v-recipe train --config RECIPE.yaml [--KEY VALUE ...] [--debug]",
        "",
        "Fine-tune Phi-3-Vision from a recipe. Every recipe key is also a flag, which overrides the YAML.",
        "",
        *rows([("config RECIPE.yaml", "the recipe to run (recipes/*.yaml)")]),
        "",
        "phi3v-recipe's own keys (data, task, Phi-3-Vision):",
    ]
    lines += rows((f.name, f.metadata.get("help", "")) for f in dataclasses.fields(RecipeArguments))
    lines += ["", "Most used training keys (TRL SFTConfig):", *rows(TRAINING_KEYS.items())]
    lines += ["", "Most used model keys (TRL ModelConfig):", *rows(MODEL_KEYS.items())]
    lines += ["", "Every key, with TRL's help: phi3v-recipe train --help-all"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(overview())
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        print(f"error: unknown command {command!r}.{hint} Commands: {', '.join(COMMANDS)}.", file=sys.stderr)
        raise SystemExit(2)
    module_name, prefix, _ = COMMANDS[command]
    if command == "train" and ("-h" in rest or "--help" in rest):
        print(train_help())
        return
    if command == "train" and "--help-all" in rest:
        from .config import RecipeParser

        RecipeParser().print_help()
        return
    if command in ("train", "prepare", "smoke", "launch") and "-h" not in rest and "--help" not in rest:
        from .recipe_file import precheck, recipe_args

        run(precheck, recipe_args(command, rest))  # the usual mistakes, in one line, before the heavy imports
    # The native phi3_v is registered with transformers where a model or processor is loaded (predict.load_model,
    # train.load_model, the family's load_processor): a command's own argument and file checks answer first.
    module = importlib.import_module(module_name)  # the app checks for Gradio itself, with a one-line error
    # usage lines and errors name the subcommand (a module that takes it as its own first word names it itself)
    sys.argv[0] = "phi3v-recipe" if prefix else f"phi3v-recipe {command}"
    result = run(module.main, prefix + rest)
    if isinstance(result, int) and not isinstance(result, bool):
        raise SystemExit(result)


__all__ = ["UserError", "main"]
