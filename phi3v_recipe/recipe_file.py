"""A recipe's file and flags, checked before torch, transformers and TRL are imported (seconds before they are).

``precheck(argv)`` says the usual mistakes at once, each as the one line the full parse (``config.parse_recipe``)
would say after the imports: a missing ``--config`` value, a missing or misspelled recipe file, YAML syntax, unknown
keys and flags (with the closest known one), ``--hub_token``, and our own keys' values in the file. The key names of
TRL's ``SFTConfig`` and ``ModelConfig`` come from a list the full parse writes (``save_keys``) for the installed TRL,
transformers and this package's recipe keys; ``make setup`` writes it. Without it, the key names are left to the full
parse. Everything else (types and ranges of TRL's keys, the model folder) is checked by the full parse, as before.
"""

import dataclasses
import difflib
import hashlib
import json
import sys
from importlib.metadata import version
from pathlib import Path

from .errors import UserError

PACKAGE = Path(__file__).resolve().parent


def config_path(args: list[str]) -> str | None:
    """The value of ``--config`` (None without the flag); a flag with no value is an error."""
    for i, arg in enumerate(args):
        if arg == "--config" or arg.startswith("--config="):
            value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
            if not value or value.startswith("--"):
                raise UserError("--config needs a recipe file, e.g. --config recipes/demo.yaml.")
            return value
    return None


def recipes_here() -> list[str]:
    """The recipe names in ./recipes (what `make train RECIPE=...` accepts)."""
    return sorted(p.stem for p in Path("recipes").glob("*.yaml"))


def read_recipe(path: str, known: set[str] | None) -> dict:
    """The recipe file as a mapping; a missing file, a YAML syntax error or (with ``known``) an unknown key is a
    one-line error."""
    import yaml

    file = Path(path)
    if not file.is_file():
        names = ", ".join(recipes_here()) or "none found in ./recipes"
        close = difflib.get_close_matches(file.stem, recipes_here(), n=1)
        hint = f" Did you mean {file.with_name(close[0] + file.suffix)}?" if close else ""
        raise UserError(f"Recipe {path} does not exist.{hint} Recipes: {names} (give recipes/<name>.yaml).")
    try:
        recipe = yaml.safe_load(file.read_text()) or {}
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        raise UserError(f"{where}: YAML syntax error: {err.problem}.") from None
    if not isinstance(recipe, dict):
        raise UserError(f"{path} must be a YAML mapping of recipe keys to values, got {type(recipe).__name__}.")
    for key in recipe if known is not None else ():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UserError(
                f"Unknown key '{key}' in {path}.{hint} Every key must be a field of SFTConfig, "
                "ModelConfig or RecipeArguments (phi3v-recipe train --help lists them)."
            )
    return recipe


def check_flags(args: list[str], known: set[str] | None) -> None:
    """Every ``--flag`` is a recipe key (or --config), spelled out in full (checked with ``known``); never
    ``--hub_token``."""
    for arg in args:
        if arg.startswith("--") and len(arg) > 2:
            key = arg[2:].split("=", 1)[0].replace("-", "_")
            if known is not None and key != "config" and key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" Did you mean --{close[0]}?" if close else ""
                raise UserError(f"Unknown flag --{key}.{hint} Flags are recipe keys, written in full.")
            if key == "hub_token":  # refused before any worker starts (a flag cannot be taken back out of ps)
                raise UserError(
                    "--hub_token puts the token in the command line of the run and its workers, which every user of "
                    "this machine sees (ps) for the whole run: give it as HF_TOKEN=... in the environment, or log in "
                    "once with `hf auth login`."
                )


def keys_file() -> Path:
    """Where the key list of the installed libraries is kept: beside the environment's packages (the venv), named
    by what decides the keys, so that an upgrade makes a new one."""
    spec = [version("trl"), version("transformers"), (PACKAGE / "arguments.py").read_bytes().hex()]
    tag = hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]
    return Path(sys.prefix) / "share" / "phi3v-recipe" / f"recipe-keys-{tag}.json"


def cached_keys() -> set[str] | None:
    try:
        return set(json.loads(keys_file().read_text()))
    except (OSError, ValueError):
        return None


def save_keys(keys: set[str]) -> None:
    """Keep the key list for the next precheck (nothing when the environment is read-only)."""
    from .files import write_atomically

    file = keys_file()
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(file, json.dumps(sorted(keys)))
    except OSError:
        pass


def split_at_config(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the arguments before ``--config``, those from it on); without it, all come before."""
    for i, arg in enumerate(argv):
        if arg == "--config" or arg.startswith("--config="):
            return argv[:i], argv[i:]
    return argv, []


def recipe_args(command: str, argv: list[str]) -> list[str]:
    """The recipe's part of a command's arguments: all of them, but for launch those from ``--config`` on (the ones
    before are accelerate's)."""
    return split_at_config(argv)[1] if command == "launch" else argv


def precheck(argv: list[str]) -> None:
    """The mistakes that need no library, said before any is imported (see the module's docstring)."""
    from .arguments import RecipeArguments

    known = cached_keys()
    path = config_path(argv)
    recipe = read_recipe(path, known) if path is not None else {}
    check_flags(argv, known)
    ours = {f.name for f in dataclasses.fields(RecipeArguments)}
    RecipeArguments(**{key: value for key, value in recipe.items() if key in ours})  # our keys' values, checked
