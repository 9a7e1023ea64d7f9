"""Phi-4-multimodal training: ours beside Microsoft's ``sample_finetune_vision.py`` restated, measured as the
Phi-3-Vision bench measures (each mode a fresh process, warm-up steps untimed, repeats interleaved, median and range).

    python -m phi3v_recipe.bench.phi4mm              # CPU: the tiny Phi-4-multimodal, 3 repeats (make bench-phi4mm)

Modes (``baselines.py``), all training the same parts (the vision LoRA and the image embedding) on the same rows:

- phi4mm-sample: the sample as published, one row per step, the batch reached by gradient accumulation; the model's
  own loss (logits over the 200,064-word vocabulary at every position);
- phi4mm-sample-batched: the sample's collate function at the measured per-device batch (``--batch_size_per_gpu``);
- phi4mm-ours: ``build_trainer`` from ``recipes/phi4mm_burberry_lora.yaml`` at the measured batch (our collator,
  length grouping, the loss at labelled positions only);
- phi4mm-ours-shipped: the same as the recipe ships it, one row per device and the batch reached by gradient
  accumulation (1 x 16 in the recipe, 1 x the measured batch here): the row that compares the recipe as users run it.

On the tiny model the output head is most of the per-token work, so scoring only the answer's positions counts for
far more here than at full size (where TRL's fused head does it on a GPU): the CPU ratio is not a GPU ratio.
"""

import json
from pathlib import Path

from ..errors import ArgumentParser
from . import mode_spec, ratios, rotated, scratch_dir, spread, summary, table
from .baselines import PHI4MM_MODES
from .measure import run_child


def main(argv=None) -> dict:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench-phi4mm.json")
    parser.add_argument("--modes", default=",".join(PHI4MM_MODES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rows", type=int, default=120)
    parser.add_argument("--timeout", type=float, default=7200, help="seconds one training run may take")
    parser.add_argument("--dynamic_hd", type=int, default=1, help="crops per image at most (the sample's: 36)")
    args = parser.parse_args(argv)

    import torch

    from ..data import DataArguments, prepare_data
    from ..families import phi4mm
    from ..synthetic import write_sample_set
    from ..tiny import CORPUS

    modes = [m for m in args.modes.split(",") if m]
    if set(modes) - set(PHI4MM_MODES):
        parser.error(f"unknown modes {sorted(set(modes) - set(PHI4MM_MODES))}; choose from {PHI4MM_MODES}")
    threads = args.threads or torch.get_num_threads()
    work = scratch_dir("phi4mm-bench-")
    model_dir = work / "tiny-phi4mm"
    phi4mm.write_tiny(model_dir, CORPUS, crops=args.dynamic_hd)
    processor = phi4mm.load_processor(model_dir, crops=args.dynamic_hd)
    csv_path = write_sample_set(work / "data", rows=args.rows, seed=0)
    data = prepare_data(DataArguments(dataset=str(csv_path), eval_fraction=0), processor, 8192)
    rows = [
        {
            "image": row["images"][0],
            "question": row["messages"][0]["content"][-1]["text"],
            "answer": row["messages"][-1]["content"][0]["text"],
        }
        for row in data.train.to_list()
    ]
    (work / "rows.json").write_text(json.dumps(rows))
    print(
        f"\nPhi-4-multimodal training bench: CPU, tiny model, dynamic_hd {args.dynamic_hd}, batch {args.batch_size}, "
        f"threads {threads}, workers {args.workers}, {len(rows)} rows, {args.warmup} warm-up + {args.steps} timed "
        f"steps, {args.repeats} repeats interleaved",
        flush=True,
    )
    runs = []
    for repeat in range(args.repeats):
        for mode in rotated(modes, repeat):
            spec = mode_spec(
                mode, repeat, work, model_dir, csv_path, args, "cpu", args.batch_size, threads, args.dynamic_hd
            )
            spec |= {"max_length": 8192, "attn": "sdpa"}
            print(f"  run: {mode} repeat {repeat + 1}", flush=True)
            runs.append(run_child(spec, work))
    results = {"dynamic_hd": args.dynamic_hd, "batch_size": args.batch_size, "threads": threads, "runs": runs}
    results["training"] = summary(runs, cuda=False)
    columns = ["mode", "batch_size", "repeats", "samples_per_s_median_step", "samples_per_s_wall", "cpu_s_per_sample"]
    columns += ["main_peak_mb"]
    print(
        "\nTraining (tiny Phi-4-multimodal, float32; median over repeats [min-max]; memory in MiB)\n"
        + table(results["training"], [*columns, "tree_peak_pss_mb", "trainable_params"])
    )
    results["vs_sample"] = {}
    for ours in ("phi4mm-ours-shipped", "phi4mm-ours"):
        for baseline in ("phi4mm-sample", "phi4mm-sample-batched"):
            if ours in modes and baseline in modes:
                ratio = ratios(runs, args.batch_size, ours, baseline)
                results["vs_sample"][f"{ours} / {baseline}"] = ratio
                print(f"{ours} / {baseline}, paired by repeat: " + ", ".join(f"{k} {v}" for k, v in ratio.items()))
    losses = {mode: spread([r["train_loss"] for r in runs if r["mode"] == mode]) for mode in modes}
    print(
        "Mean training loss of the run (the same rows; the same parameters get gradients): "
        + ", ".join(f"{m} {v}" for m, v in losses.items())
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nWrote {out}")
    return results


if __name__ == "__main__":
    from ..errors import run

    run(main)
