"""User errors: mistakes in a recipe, a flag, a file or the environment, shown as one or two lines.

Every command runs through ``run``: a ``UserError`` prints ``error: <what is wrong, the value, the fix>`` and exits
with status 2; any other exception is a bug and keeps its traceback. ``--debug`` (or ``PHI3V_DEBUG=1``) shows the
traceback of user errors too.
"""

import argparse
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path


class UserError(ValueError):
    """Something the user can fix: the message says what is wrong, with the value, and the fix."""


# Set by `phi3v-recipe launch` for the processes it starts: a user error is written there, for it to say once.
ERRORS_DIR = "PHI3V_ERRORS_DIR"


class SaidByProcessZero(UserError):
    """Process 0's user error, raised on the other processes of a run so that all stop together: said once, by 0."""


def debugging(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("PHI3V_DEBUG", "") not in ("", "0")


def fresh_line() -> str:
    """A newline when a progress bar is still drawn on stderr's current line, so the error starts a line."""
    tqdm = sys.modules.get("tqdm")
    return "\n" if tqdm is not None and tqdm.tqdm._instances else ""


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT, raised where the process is, so that every ``with`` and ``finally`` on the way out cleans up
    (the data checks' worker pool and its manager are ended) and code that handles Ctrl-C handles SIGTERM alike."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


received: int | None = None  # the stopping signal, once one arrived


def stop_on_signals() -> None:
    """From now on SIGTERM stops this process as Ctrl-C does (its default ends it at once: the processes it started
    were left running). A process forked from it keeps the default (a pool's worker told to terminate just ends)."""
    owner = os.getpid()

    def stop(signum, frame):
        global received
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        received = signum
        raise Stopped(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)


@contextlib.contextmanager
def signals_held():
    """Inside, SIGTERM and SIGINT wait for the end of the block (a save is never cut in half); then the first one
    stops the process as it would have."""
    held = []

    def hold(signum, frame):
        global received
        received = received or signum
        held.append(signum)

    previous = {signum: signal.signal(signum, hold) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if held:
        raise Stopped(held[0])


def stopped_by(err: BaseException) -> int | None:
    """The signal that stopped the process, when ``err`` is its exception or one raised while unwinding from it
    (``datasets`` replaces an interruption of its worker pool with a TimeoutError of its own)."""
    if isinstance(err, Stopped):
        return err.signum
    if isinstance(err, KeyboardInterrupt):
        return signal.SIGINT
    return received


def run(main, argv: list[str] | None = None):
    """Call ``main(argv)`` (``--debug`` removed); a UserError becomes one line on stderr and exit status 2; a signal
    stops it with one line and status 128 + the signal's number."""
    global received
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debugging(argv)
    received = None
    if threading.current_thread() is threading.main_thread():
        stop_on_signals()
    try:
        return main([arg for arg in argv if arg != "--debug"])
    except UserError as err:
        if debug:
            raise
        if isinstance(err, SaidByProcessZero):
            pass  # process 0 says it
        elif os.environ.get(ERRORS_DIR):  # `phi3v-recipe launch` says it
            Path(os.environ[ERRORS_DIR], str(os.getpid())).write_text(str(err))
        else:
            print(f"{fresh_line()}error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except (KeyboardInterrupt, Exception) as err:
        signum = stopped_by(err)
        if signum is None or debug:
            raise
        print(f"{fresh_line()}Stopped on {signal.Signals(signum).name}.", file=sys.stderr)
        raise SystemExit(128 + signum) from None
    finally:
        if received is not None:
            end_children()


def end_children(grace: float = 5) -> None:
    """End every process this one started that still runs. A signal can cut short the start of a worker pool's
    manager before anything would shut it down, and the exit would then wait for it forever."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    for child in psutil.wait_procs(children, timeout=grace)[1]:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


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
