"""Prepare a recipe's data ahead of training (on a cluster's head node, say): every row checked once, in parallel,
and kept where every process of the run, each rerun and each resume reads it back in seconds.

    phi3v-recipe prepare --config recipes/burberry_lora.yaml [--dataset_num_proc 16] [--prepared_dir DIR]

The processor is the recipe's model's (its tokenizer and image settings decide the token counts): it is loaded from
the Hub's cache or downloaded, never the weights.
"""

import sys

from .errors import UserError, run


def main(argv: list[str] | None = None):
    from . import hub
    from .config import parse_recipe
    from .data import prepare_data
    from .train import load_processor

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return None
    recipe, args, model_args = parse_recipe(argv)
    hub.ensure_available(model_args.model_name_or_path, "model", revision=model_args.model_revision)
    data = prepare_data(recipe, load_processor(model_args, recipe), args.max_length, args.dataset_num_proc)
    if len(data.train) == 0:
        raise UserError(f"No training rows left after the checks ({data.summary()}).")
    print(f"Data: {data.summary()}")
    return data


if __name__ == "__main__":
    run(main)
