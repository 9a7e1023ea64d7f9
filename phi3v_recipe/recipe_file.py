"""A recipe's file and flags, checked before torch, transformers and TRL are imported (seconds before they are).

``precheck(argv)`` says the usual mistakes at once, each as the one line the full parse (``config.parse_recipe``)
would say after the imports: a missing ``--config`` value, a missing or misspelled recipe file, YAML syntax, unknown
keys and flags (with the closest known one), a flag without its value, ``--hub_token``, each value's type or choices
(``--max_steps many``, ``dtype: bfloat61``), the ranges of the usual numbers (``RANGES``, which the full parse checks
too), and our own keys' values in the file. The keys of TRL's ``SFTConfig`` and ``ModelConfig`` and the kind of value
each takes come from a list the full parse writes (``save_kinds``) for the installed TRL, transformers and this
package's recipe keys; ``make setup`` writes it. Without it, those checks are left to the full parse. What needs the
libraries (the model folder, TrainingArguments' own checks across keys) is checked by the full parse.
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
NULL = ("null", "none", "~")  # --key null clears one of our optional keys (config.take_nulls)
BOOLS = {"yes": True, "true": True, "t": True, "y": True, "1": True, "no": False, "false": False, "f": False, "n": False,
         "0": False}  # fmt: skip  # what transformers' string_to_bool reads
# Numbers that must be in range, each with its test and what the error says it must be.
RANGES = {
    "learning_rate": (lambda v: v > 0, "positive"),
    "per_device_train_batch_size": (lambda v: v > 0, "positive"),
    "per_device_eval_batch_size": (lambda v: v > 0, "positive"),
    "gradient_accumulation_steps": (lambda v: v > 0, "positive"),
    "max_length": (lambda v: v is None or v >= 1, "at least 1 (or null for no limit)"),
    "lora_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
}
LORA_RANGES = {"lora_r": (lambda v: v >= 1, "at least 1"), "lora_alpha": (lambda v: v > 0, "positive")}


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


def check_flags(args: list[str], known: set[str] | None, also: tuple[str, ...] = ()) -> None:
    """Every ``--flag`` is a recipe key (or --config), spelled out in full (checked with ``known``; the command's own
    flags ``also`` are named in the hint too); never ``--hub_token``."""
    for arg in args:
        if arg.startswith("--") and len(arg) > 2:
            key = arg[2:].split("=", 1)[0].replace("-", "_")
            if known is not None and key != "config" and key not in known:
                close = difflib.get_close_matches(key, [*known, *also], n=1)
                hint = f" Did you mean --{close[0]}?" if close else ""
                raise UserError(f"Unknown flag --{key}.{hint} Flags are recipe keys, written in full.")
            if key == "hub_token":  # refused before any worker starts (a flag cannot be taken back out of ps)
                raise UserError(
                    "--hub_token puts the token in the command line of the run and its workers, which every user of "
                    "this machine sees (ps) for the whole run: give it as HF_TOKEN=... in the environment, or log in "
                    "once with `hf auth login`."
                )


def converted(key: str, value: str, kind: dict, where: str):
    """A value given as text, read as the parser reads it (int, float, true/false, one of the choices); a value it
    would refuse is a one-line error."""
    if "choices" in kind:
        if value not in kind["choices"]:
            close = difflib.get_close_matches(value, kind["choices"], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UserError(f"{key}={value!r}{where} is not one of {', '.join(kind['choices'])}.{hint}")
        return value
    kind = kind.get("type")
    try:
        if kind == "bool":
            return BOOLS[value.lower()]
        return {"int": int, "float": float}.get(kind, str)(value)
    except (KeyError, ValueError):
        wanted = {"bool": "true or false", "int": "a whole number", "float": "a number"}[kind]
        raise UserError(f"{key} must be {wanted}, got {value!r}{where}.") from None


def clearable_keys() -> dict[str, list | None]:
    """Our keys that ``--key null`` clears, each with its cleared value: the optional ones (None) and lists ([])."""
    import typing

    from .arguments import RecipeArguments

    hints = typing.get_type_hints(RecipeArguments)
    return {
        name: [] if typing.get_origin(hint) is list else None
        for name, hint in hints.items()
        if typing.get_origin(hint) is list or type(None) in typing.get_args(hint)
    }


def check_values(recipe: dict, path: str | None, args: list[str], kinds: dict[str, dict]) -> dict:
    """The recipe's and the flags' values, read as the full parse reads them, then the ranges of ``RANGES``: the
    recipe's values as read."""
    clearable = clearable_keys()
    values = {}
    for key, value in recipe.items():  # the parser converts a recipe's text values (YAML's numbers and lists it keeps)
        kind = kinds.get(key, {})
        items = value if isinstance(value, list) and kind.get("many") else [value]
        read = [converted(key, item, kind, f" in {path}") if isinstance(item, str) else item for item in items]
        values[key] = read if items is value else read[0]
    in_recipe = dict(values)
    for i, arg in enumerate(args):
        key, equals, value = arg[2:].partition("=")
        if not arg.startswith("--") or key not in kinds or key == "config":
            continue
        kind = kinds[key]
        given = [value] if equals else []
        for following in args[i + 1 :] if not equals else ():
            if following.startswith("--") or (given and not kind.get("many")):
                break
            given.append(following)
        if not given:
            if kind.get("type") == "bool":  # --bf16 alone means true
                values[key] = True
                continue
            raise UserError(f"--{key} needs a value (--{key} VALUE).")
        if key in clearable and given[0].lower() in NULL:
            values[key] = clearable[key]
            continue
        read = [converted(key, item, kind, f" (--{key})") for item in given]
        values[key] = read if kind.get("many") else read[0]
    check_ranges(values)
    return in_recipe


def check_ranges(values: dict) -> None:
    """The numbers of ``RANGES`` (and LoRA's under use_peft) that ``values`` holds, each in its range."""
    ranges = RANGES | (LORA_RANGES if values.get("use_peft") else {})
    for key, (test, wanted) in ranges.items():
        value = values.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and not test(value):
            raise UserError(f"{key} must be {wanted}, got {value}.")


def keys_file() -> Path:
    """Where the key list of the installed libraries is kept: beside the environment's packages (the venv), named
    by what decides the keys, so that an upgrade makes a new one."""
    spec = [version("trl"), version("transformers"), (PACKAGE / "arguments.py").read_bytes().hex()]
    tag = hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]
    return Path(sys.prefix) / "share" / "phi3v-recipe" / f"recipe-keys-{tag}.json"


def cached_kinds() -> dict[str, dict] | None:
    """key -> the kind of value it takes, as the full parse last wrote them (None before it has)."""
    try:
        kinds = json.loads(keys_file().read_text())
    except (OSError, ValueError):
        return None
    return kinds if isinstance(kinds, dict) else None


def save_kinds(kinds: dict[str, dict]) -> None:
    """Keep the keys and their kinds for the next precheck (nothing when the environment is read-only)."""
    from .files import write_atomically

    file = keys_file()
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(file, json.dumps(kinds, sort_keys=True))
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


def precheck(argv: list[str], also: tuple[str, ...] = ()) -> None:
    """The mistakes that need no library, said before any is imported (see the module's docstring); ``also``: the
    command's own flags, taken out of ``argv`` already, for the hints."""
    from .arguments import RecipeArguments

    kinds = cached_kinds()
    known = set(kinds) if kinds is not None else None
    path = config_path(argv)
    recipe = read_recipe(path, known) if path is not None else {}
    check_flags(argv, known, also)
    if kinds is not None:
        recipe = check_values(recipe, path, argv, kinds)
    ours = {f.name for f in dataclasses.fields(RecipeArguments)}
    RecipeArguments(**{key: value for key, value in recipe.items() if key in ours})  # our keys' values, checked
