"""phi3v-recipe: fine-tune Phi-3-Vision / Phi-3.5-Vision with TRL.

Importing the package registers the native ``phi3_v`` model with transformers' Auto classes (one class serves
``AutoModelForCausalLM`` and ``AutoModelForImageTextToText``), so hub checkpoints load without ``trust_remote_code``
and the ``image-text-to-text`` pipeline works. The ``phi3v-recipe`` command registers only after parsing its
arguments, so that its ``--help`` answers at once.
"""

import logging
import sys
import warnings
from pathlib import Path

__all__ = ["Phi3VConfig", "Phi3VForCausalLM", "Phi3VImageProcessor", "Phi3VModel", "Phi3VProcessor", "register"]


def register() -> None:
    """Register ``phi3_v`` with the transformers Auto classes (idempotent)."""
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
    )

    from .phi3_v import (
        Phi3VConfig,
        Phi3VForCausalLM,
        Phi3VImageProcessor,
        Phi3VImageProcessorPil,
        Phi3VModel,
        Phi3VProcessor,
    )

    AutoConfig.register("phi3_v", Phi3VConfig, exist_ok=True)
    AutoModel.register(Phi3VConfig, Phi3VModel, exist_ok=True)
    AutoModelForCausalLM.register(Phi3VConfig, Phi3VForCausalLM, exist_ok=True)
    AutoModelForImageTextToText.register(Phi3VConfig, Phi3VForCausalLM, exist_ok=True)
    # Both backends give the same pixels; transformers picks "torchvision" when torchvision is installed.
    backends = {"pil": Phi3VImageProcessorPil, "torchvision": Phi3VImageProcessor}
    AutoImageProcessor.register(Phi3VConfig, image_processor_classes=backends, exist_ok=True)
    AutoProcessor.register(Phi3VConfig, Phi3VProcessor, exist_ok=True)
    # Libraries that find a model class by its `architectures` name in the transformers namespace (TRL's
    # `SFTTrainer(model="path")` and `trl sft`) then take ours, never the hub's remote code named by `auto_map`.
    # (Importing transformers' model modules replaces the top-level module in sys.modules: set it on the one in use.)
    sys.modules["transformers"].Phi3VForCausalLM = Phi3VForCausalLM


def __getattr__(name: str):
    if name in __all__:
        from . import phi3_v

        return getattr(phi3_v, name)
    raise AttributeError(f"module 'phi3v_recipe' has no attribute {name!r}")


# bitsandbytes says at import, on CPUs with AVX512-BF16, that the optional `kernels` package is missing; 4-bit
# layers work without it (on a slower path). That one logger is quieted; its errors still show.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# transformers 5 renamed gradient checkpointing to activation checkpointing. Our recipes use the new keys, but PEFT
# 0.21 still reads `is_gradient_checkpointing` and TRL 1.16's SFTConfig still sets `gradient_checkpointing`, each a
# FutureWarning on every run. Those two messages only are silenced.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
# TRL 1.16's GRPOTrainer turns checkpointing off and on around generation by the old names.
warnings.filterwarnings(
    "ignore", message="`gradient_checkpointing_(en|dis)able` is deprecated", category=FutureWarning
)


def _answer_module_help() -> None:
    """``python -m phi3v_recipe.MODULE --help`` answers as ``phi3v-recipe COMMAND --help`` does, at once: before the
    registration below and the module's own imports of torch and transformers (tens of seconds on a busy machine).
    While ``-m`` imports this package, sys.argv[0] is still "-m": the module is read from the interpreter's own
    command line."""
    command_line = sys.orig_argv
    if "-m" not in command_line[:-1] or not {"-h", "--help", "--help-all"} & set(sys.argv[1:]):
        return
    module = command_line[command_line.index("-m") + 1]
    from .cli import COMMANDS, main

    for command, (name, _, _) in COMMANDS.items():
        if name == module:
            main([command, *sys.argv[1:]])
            raise SystemExit(0)


def _check_recipe_first() -> None:
    """``python -m phi3v_recipe.train`` (or prepare, smoke, launch) says a mistake in its recipe or flags in one line
    before the registration below and the module's own imports (recipe_file.precheck), as the phi3v-recipe command
    does."""
    command_line = sys.orig_argv
    if "-m" not in command_line[:-1]:
        return
    module = command_line[command_line.index("-m") + 1]
    if module in ("phi3v_recipe.train", "phi3v_recipe.prepare", "phi3v_recipe.smoke", "phi3v_recipe.launch"):
        from .errors import run
        from .recipe_file import precheck, recipe_args

        run(precheck, recipe_args(module.split(".")[-1], sys.argv[1:]))


# Modules run with -m that check their arguments and files first and register phi3_v where they load a model
# (predict.load_model, the family's load_processor), or use none (slurm): a mistake answers before transformers loads.
LIGHT_MODULES = {"phi3v_recipe.slurm", "phi3v_recipe.evaluate", "phi3v_recipe.predict", "phi3v_recipe.app",
                 "phi3v_recipe.pairs", "phi3v_recipe.plan"}  # fmt: skip


def _running_a_light_module() -> bool:
    command_line = sys.orig_argv
    return "-m" in command_line[:-1] and command_line[command_line.index("-m") + 1] in LIGHT_MODULES


_answer_module_help()
_check_recipe_first()
if Path(sys.argv[0]).name != "phi3v-recipe" and not _running_a_light_module():
    register()
