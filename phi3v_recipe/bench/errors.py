"""Time to a user error: each usual mistake through each entry point, beside the same mistake found the way every run
found it before the precheck (the training module and its libraries imported, then the full parse).

    python -m phi3v_recipe.bench.errors [--repeats 3]        (make bench-errors)

Each measurement is a fresh process, timed from its start to its exit, which must be status 2 with one ``error:``
line; median [min-max] of the repeats. Import times of torch, transformers and TRL (a fresh ``python -c import``
each) are printed beside, for scale. Seconds on a shared machine move with its load: compare rows of one run.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MISTAKES = {
    "misspelled key": ["--config", "{bad_key}"],
    "unknown flag": ["--config", "recipes/demo.yaml", "--learning_r", "1e-4"],
    "flag without value": ["--config"],
    "misspelled recipe": ["--config", "recipes/dmeo.yaml"],
    "YAML syntax": ["--config", "{bad_yaml}"],
    "our key's value": ["--config", "{bad_value}"],
    "a value's type": ["--config", "recipes/demo.yaml", "--max_steps", "many"],
    "a choice in the recipe": ["--config", "{bad_choice}"],
    "a value's range": ["--config", "recipes/demo.yaml", "--learning_rate", "-1"],
}
ENTRY_POINTS = {
    "python -m phi3v_recipe.train": [str(sys.executable), "-m", "phi3v_recipe.train"],
    "phi3v-recipe train": [str(BIN / "phi3v-recipe"), "train"],
    "phi3v-recipe launch": [str(BIN / "phi3v-recipe"), "launch", "--num_processes", "1"],
    "phi3v-recipe evaluate": [str(BIN / "phi3v-recipe"), "evaluate"],
    # What every entry point did before: the training module (torch, transformers, TRL) imported, then the parse.
    "before: import, then parse": [
        str(sys.executable),
        "-c",
        "import sys; from phi3v_recipe.errors import run; from phi3v_recipe.train import main; run(main, sys.argv[1:])",
    ],
}


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    if done.returncode != 2 or len(errors) != 1 or "Traceback" in done.stderr:
        raise RuntimeError(f"{command} did not end in one error line:\n{done.stderr[-2000:]}")
    return seconds


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from ..config import known_keys

    known_keys()  # the key list the precheck reads, as make setup writes it
    with tempfile.TemporaryDirectory() as folder:
        files = {
            "bad_key": Path(folder, "key.yaml"),
            "bad_yaml": Path(folder, "yaml.yaml"),
            "bad_value": Path(folder, "value.yaml"),
            "bad_choice": Path(folder, "choice.yaml"),
        }
        demo = (ROOT / "recipes/demo.yaml").read_text()
        files["bad_choice"].write_text(demo.replace("dtype: float32", "dtype: bfloat61"))
        files["bad_key"].write_text("model_name_or_path: outputs/tiny-phi3v\nlearnin_rate: 1.0e-4\n")
        files["bad_yaml"].write_text("model_name_or_path: outputs/tiny-phi3v\nlearning_rate: [1.0e-4\n")
        files["bad_value"].write_text("model_name_or_path: outputs/tiny-phi3v\neval_fraction: 2\n")
        rows = []
        for mistake, argv_template in MISTAKES.items():
            mistake_argv = [arg.format(**files) for arg in argv_template]
            for entry, command in ENTRY_POINTS.items():
                seconds = [timed([*command, *mistake_argv]) for _ in range(args.repeats)]
                rows.append({"mistake": mistake, "entry point": entry, "seconds": seconds, "s": spread(seconds)})
                print(f"  {mistake}: {entry}: {rows[-1]['s']} s", flush=True)
    imports = {
        module: spread([timed_import(module) for _ in range(args.repeats)])
        for module in ("yaml", "torch", "transformers", "trl")
    }
    from . import table

    print(f"\nTime to a user error, s (median [min-max] of {args.repeats} fresh processes)")
    print(table(rows, ["mistake", "entry point", "s"]))
    print("\nImport time alone, s: " + ", ".join(f"{m} {s}" for m, s in imports.items()))
    return {"rows": rows, "imports": imports}


def timed_import(module: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, timeout=600)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
