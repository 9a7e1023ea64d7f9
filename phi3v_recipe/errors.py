"""User errors: mistakes in a recipe, a flag, a file or the environment, shown as one or two lines.

Every command runs through ``run``: a ``UserError`` prints ``error: <what is wrong, the value, the fix>`` and exits
with status 2; any other exception is a bug and keeps its traceback. ``--debug`` (or ``PHI3V_DEBUG=1``) shows the
traceback of user errors too.
"""

import argparse
import os
import sys


class UserError(ValueError):
    """Something the user can fix: the message says what is wrong, with the value, and the fix."""


def debugging(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("PHI3V_DEBUG", "") not in ("", "0")


def fresh_line() -> str:
    """A newline when a progress bar is still drawn on stderr's current line, so the error starts a line."""
    tqdm = sys.modules.get("tqdm")
    return "\n" if tqdm is not None and tqdm.tqdm._instances else ""


def run(main, argv: list[str] | None = None):
    """Call ``main(argv)`` (``--debug`` removed); a UserError becomes one line on stderr and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debugging(argv)
    try:
        return main([arg for arg in argv if arg != "--debug"])
    except UserError as err:
        if debug:
            raise
        print(f"{fresh_line()}error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        raise SystemExit(130) from None


def unloadable_model(err: Exception, name: str) -> UserError | None:
    """A model folder that cannot load, said as one line (None when the error is not one of those)."""
    text = str(err)
    if type(err).__name__ == "SafetensorError" or "deserializing header" in text:
        return UserError(
            f"The weights of {name} are not a complete safetensors file ({text}): the download or copy was cut "
            "short. Fetch or copy the model again."
        )
    if "Padding_idx must be within num_embeddings" in text or "size mismatch" in text:
        return UserError(
            f"{name} does not fit a Phi-3-Vision vocabulary ({text.splitlines()[0][:200]}): its config.json's "
            "vocab_size must cover the tokenizer's ids (32064 in the hub checkpoints) and match its weights."
        )
    return None


class ArgumentParser(argparse.ArgumentParser):
    """argparse for our commands: full flag names only, and an error is one line (not a usage dump)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        if "prog" not in kwargs and spec is not None and sys.argv[0].endswith(".py"):
            kwargs["prog"] = f"python -m {spec.name.removesuffix('.__main__')}"  # not "__main__.py"
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help).")
