"""Benchmarks: our training side by side with what users would run instead, each measured the same way.

    python -m phi3v_recipe.bench                              # CPU: the tiny model, 3 interleaved repeats
    python -m phi3v_recipe.bench --device cuda --sweep 1,2,4,8   # one GPU: the full-size model, batch sweep

Sections: 1. preprocessing (images per CPU-second, one thread), 2. padding (share of padded tokens), 3. training (the modes
below, each in a fresh process, interleaved, repeated), 4. FLOPs per sample of the full-size model for each mode
(analytic, from the model's shapes and this data's token counts), 5. the cost of moving ``pixel_values``.

Modes, each a Trainer run through ``trainer.train()`` on the same rows, with the same DataLoader workers, threads,
attention kernel, dtype and warm-up steps:

- official: the Phi-3 cookbook's vision fine-tuning restated (its dataset and collator: processor per example,
  answer-only labels, right padding to the longest row, ``attention_mask = input_ids != pad``; HF ``Trainer`` with
  the model's own full-logits loss; ``create_lora_config``'s LoRA: r 64 on the decoder, ``lm_head``, the CLIP layers
  that run and the image projection; its optimiser settings and gradient checkpointing).
- official-frozen: the same with the cookbook's ``--freeze_vision_model`` (LoRA on the language model and ``lm_head``
  only; CLIP and the projection frozen): the like-for-like baseline, since ours freezes the vision model too.
- official-bs1, official-frozen-bs1: each at the cookbook scripts' per-device batch 1, the batch size reached by
  gradient accumulation (no padding, but the GPU works on one row at a time).
- official-frozen-bs1-nohead: official-frozen-bs1 without the LoRA on ``lm_head``: the very adapter ours trains (the
  decoder's four projections), trained the cookbook's way. The cookbook's LoRA adapts the head, ours does not (TRL's
  fused loss reads ``lm_head.weight`` directly); on the tiny model that head LoRA is half of official-frozen's FLOPs,
  so only this row compares the same adapter.
- guide: the public W&B guide's script (the bare tokenizer, every row left-padded to 512, labels = input_ids, full
  fine-tuning, batch 1). It never gives the model the image: for the record only.
- trl: TRL's own VLM path on our model (``SFTTrainer`` with its collator, images in a ``datasets`` Image column,
  ``assistant_only_loss``, ``max_length=None``), with the recipe's LoRA.
- ours: what ``make train RECIPE=burberry_lora`` builds (``phi3v_recipe.train.build_trainer``: our collator,
  length-grouped sampler, loss at labelled positions), with the batch size, workers and steps set as above.
- ours-ckpt-2: the same with every 2nd decoder layer checkpointed (``activation_checkpointing_kwargs:
  {every_n_layers: 2}``): half the recomputation, more activation memory.
- ours-no-ckpt: the same with ``activation_checkpointing: false`` (no recomputation; more activation memory).

Measured: samples/s from the median step (steps timed between ``on_step_end`` callbacks, so waiting for data
counts) and from the wall time of all timed steps; peak memory of the main process (its ``VmHWM``: each run is a
fresh process) and of the whole process tree (main + DataLoader workers: the PSS of each process, summed, sampled
every 50 ms by the parent; PSS counts pages shared between processes once); on CUDA ``max_memory_allocated`` and
``max_memory_reserved``.
"""

import argparse
import atexit
import json
import shutil
import statistics
import tempfile
from pathlib import Path

from ..errors import ArgumentParser
from .baselines import MODES
from .flops import FLOPS_FORMULA, analytic_table, head_share, model_shapes, token_stats
from .measure import run_child, run_mode
from .micro import bench_padding, bench_pipes, bench_preprocessing

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s, by GPU name


def scratch_dir(prefix: str) -> Path:
    """A folder for one bench run's model, data and run outputs, removed when the bench's process exits (each run
    used to leave its own behind: 1.5 GB of them in /tmp here after a few days of runs)."""
    folder = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return Path(folder)


def build_model_dir(kind: str, folder: Path, num_crops: int) -> Path:
    """The tiny checkpoint, or the full-size architecture with random weights built in bf16 on the CPU (the
    parent never holds GPU memory) and a tiny tokenizer."""
    from ..tiny import write_tiny_checkpoint

    if kind == "tiny":
        return write_tiny_checkpoint(folder / "tiny", num_crops=num_crops)
    import torch

    from ..phi3_v import Phi3VConfig, Phi3VForCausalLM
    from ..tiny import build_tokenizer, preprocessor_config_dict

    out = folder / "full"
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # 8 GB of weights, never a float32 copy
    try:
        model = Phi3VForCausalLM(Phi3VConfig(torch_dtype="bfloat16"))
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(out)
    del model
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor_config_dict(num_crops)))
    build_tokenizer().save_pretrained(out)
    return out


def rotated(modes: list[str], repeat: int) -> list[str]:
    """The modes in the order of this repeat: interleaved, each repeat starting one further."""
    return modes[repeat % len(modes) :] + modes[: repeat % len(modes)]


def mode_spec(mode, repeat, work: Path, model_dir, csv_path, args, device, batch, threads, crops) -> dict:
    """What the child process of one run reads: the mode, its model and rows, and the settings every mode shares."""
    return {
        "mode": mode,
        "repeat": repeat,
        "model_dir": str(model_dir),
        "csv": str(csv_path),
        "rows": str(work / "rows.json"),
        "device": device,
        # float32 on the CPU unless --dtype bfloat16 (bf16 weights and autocast, as on a GPU)
        "dtype": getattr(args, "dtype", None) or ("float32" if device == "cpu" else "bfloat16"),
        "batch_size": batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "workers": args.workers,
        "threads": threads,
        "num_crops": crops,
        "out": str(work / f"run-{mode}"),
        "timeout": args.timeout,
    }


def spread(values: list[float]) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "-"
    middle = statistics.median(values)
    return f"{middle:.4g} [{min(values):.4g}-{max(values):.4g}]" if len(values) > 1 else f"{middle:.4g}"


def summary(runs: list[dict], cuda: bool) -> list[dict]:
    """Per mode and batch size: the median over repeats and the range, of each measure."""
    keys = ["samples_per_s_median_step", "samples_per_s_wall", "cpu_s_per_sample", "main_peak_mb", "tree_peak_pss_mb"]
    keys += ["gpu_peak_allocated_mb", "gpu_peak_reserved_mb"] if cuda else []
    table = []
    for mode in dict.fromkeys(r["mode"] for r in runs):
        for batch in sorted({r["batch_size"] for r in runs if r["mode"] == mode}):
            group = [r for r in runs if r["mode"] == mode and r["batch_size"] == batch]
            if any(r.get("oom") for r in group):
                table.append({"mode": mode, "batch_size": batch, "samples_per_s_median_step": "out of memory"})
                continue
            row = {"mode": mode, "batch_size": batch, "repeats": len(group)}
            row |= {k: spread([r[k] for r in group]) for k in keys}
            row["trainable_params"] = group[0]["trainable_params"]
            table.append(row)
    return table


def ratios(runs: list[dict], batch: int, mode: str = "ours", baseline: str = "official-frozen") -> dict:
    """``mode`` / ``baseline`` for each repeat (paired: they ran next to each other), median and range."""
    pairs = {}
    for r in runs:
        if r["batch_size"] == batch and r["mode"] in (mode, baseline) and not r.get("oom"):
            pairs.setdefault(r["repeat"], {})[r["mode"]] = r
    pairs = [p for p in pairs.values() if len(p) == 2]
    keys = ["samples_per_s_median_step", "samples_per_s_wall", "cpu_s_per_sample", "main_peak_mb", "tree_peak_pss_mb"]
    keys += ["gpu_peak_allocated_mb"]
    return {k: spread([p[mode][k] / p[baseline][k] for p in pairs]) for k in keys if pairs and k in pairs[0][mode]}


# The headline comparison first: the cookbook's own LoRA with the vision model frozen, as ours, at its scripts'
# per-device batch 1 (their default; the DocVQA script asserts it), then the same without its LoRA on lm_head (ours'
# adapter exactly), then at the batch size measured; then its default LoRA (which also adapts CLIP and the
# projection). trainable_params says how many each trains.
BASELINES = ["official-frozen-bs1", "official-frozen-bs1-nohead", "official-frozen", "official-bs1", "official"]


def table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    widths = [max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(fmt(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


def flops_table(rows: list[dict], scale: float, unit: str) -> str:
    parts = ["decoder", "attention", "head", "vision", "recompute", "total"]
    scaled = [r | {k: r[k] / scale for k in parts} for r in rows]
    return f"({unit} per sample)\n" + table(scaled, ["mode", "tokens_per_row", *parts, "vs_ours"])


def main(argv=None) -> dict:
    parser = ArgumentParser(description="phi3v-recipe benchmarks against the baselines (tables + JSON).")
    parser.add_argument("--out", default="outputs/bench.json")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when there is one")
    parser.add_argument("--model", choices=["tiny", "full"], default=None, help="default: tiny on CPU, full on GPU")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {','.join(MODES)}")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every mode, interleaved")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument(
        "--sweep",
        default=None,
        help="batch sizes to run, e.g. 1,2,4,8 (a mode stops at OOM); default: 1,2,4,8 on CUDA",
    )
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, every mode")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: this machine's)")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=7200, help="seconds one training run may take")
    parser.add_argument("--num_crops", type=int, default=None, help="default: 4 on CPU, 16 on GPU")
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default=None, help="default: float32 on CPU, bfloat16 on GPU"
    )
    parser.add_argument("--max_length", type=int, default=4096, help="ours: drops no synthetic row at num_crops 16")
    parser.add_argument("--skip", default="", help="sections to skip: preprocessing,padding,pipes")
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)  # internal: one mode, from a spec file
    args = parser.parse_args(argv)
    if args.run:
        print("RESULT " + json.dumps(run_mode(json.loads(Path(args.run).read_text()))), flush=True)
        return {}

    import torch
    from transformers import AutoConfig, AutoProcessor
    from transformers.utils import is_flash_attn_2_available

    import phi3v_recipe  # noqa: F401  (registers phi3_v)

    from ..data import DataArguments, prepare_data
    from ..phi3_v import Phi3VConfig
    from ..synthetic import write_sample_set

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    kind = args.model or ("full" if device == "cuda" else "tiny")
    num_crops = args.num_crops or (16 if device == "cuda" else 4)
    threads = args.threads or torch.get_num_threads()
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {MODES}")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    sweep = args.sweep or ("1,2,4,8" if device == "cuda" else str(args.batch_size))
    batches = [int(b) for b in sweep.split(",")]
    attn = "flash_attention_2" if device == "cuda" and is_flash_attn_2_available() else "sdpa"
    work = scratch_dir("phi3v-bench-")
    print(f"Building the {kind} model in {work} (removed at the end) ...", flush=True)
    model_dir = build_model_dir(kind, work, num_crops)
    processor = AutoProcessor.from_pretrained(model_dir, num_crops=num_crops)
    csv_path = write_sample_set(work / "data", rows=args.rows, seed=0)
    data = prepare_data(DataArguments(dataset=str(csv_path), eval_fraction=0), processor, args.max_length)
    rows, lengths = data.train.to_list(), list(data.train["length"])
    plain_rows = [
        {
            "image": row["images"][0],
            "question": row["messages"][0]["content"][-1]["text"],
            "answer": row["messages"][-1]["content"][0]["text"],
            "messages": row["messages"],
        }
        for row in rows
    ]
    (work / "rows.json").write_text(json.dumps(plain_rows))
    results = {
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "model": kind,
        "num_crops": num_crops,
        "rows": len(rows),
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "workers": args.workers,
        "threads": threads,
        "attention": attn,
        "dtype": args.dtype or ("float32" if device == "cpu" else "bfloat16"),
    }
    print(
        f"\nphi3v-recipe benchmarks: device={device}{' (' + results['gpu'] + ')' if results['gpu'] else ''} "
        f"model={kind} num_crops={num_crops} threads={threads} workers={args.workers} attention={attn} "
        f"rows={len(rows)} steps={args.warmup} warm-up + {args.steps} timed, {args.repeats} repeats",
        flush=True,
    )
    skip = set(args.skip.split(","))
    if "preprocessing" not in skip:
        results["preprocessing"] = bench_preprocessing(processor, work)
        shown = [
            row | {"images_per_s_per_core": spread(row["images_per_s_per_core"])} for row in results["preprocessing"]
        ]
        print(
            "\n1. Preprocessing (one thread, images per CPU-second; 9 photos, 3 interleaved repeats: median [min-max])\n"
            + table(shown, ["num_crops", "implementation", "images_per_s_per_core"])
        )
    if "padding" not in skip:
        results["padding"] = bench_padding(lengths, args.batch_size)
        print(
            f"\n2. Padding (batch {args.batch_size}, {len(lengths)} rows, {min(lengths)}-{max(lengths)} tokens at "
            f"num_crops {num_crops})\n" + table(results["padding"], ["padding", "padded_share"])
        )

    runs, out_of_memory = [], set()
    for batch in batches:
        for repeat in range(args.repeats):
            for mode in rotated(modes, repeat):
                if mode in out_of_memory or (mode == "guide" and batch != batches[0]):
                    continue  # the guide runs at batch 1, as published: once per repeat
                spec = mode_spec(mode, repeat, work, model_dir, csv_path, args, device, batch, threads, num_crops)
                spec |= {"max_length": args.max_length, "attn": attn}
                print(f"  run: {mode} batch {1 if mode == 'guide' else batch} repeat {repeat + 1}", flush=True)
                result = run_child(spec, work)
                runs.append(result)
                if result.get("oom"):
                    out_of_memory.add(mode)
    results["training_runs"] = runs
    results["training"] = summary(runs, device == "cuda")
    results["vs_official"] = {
        f"{mode} / {baseline}": {b: ratios(runs, b, mode, baseline) for b in batches}
        for mode in ("ours", "ours-ckpt-2", "ours-no-ckpt")
        for baseline in BASELINES
        if mode in modes and baseline in modes
    }
    columns = ["mode", "batch_size", "repeats", "samples_per_s_median_step", "samples_per_s_wall", "cpu_s_per_sample"]
    columns += ["main_peak_mb"]
    columns += ["tree_peak_pss_mb", "trainable_params"]
    columns += ["gpu_peak_allocated_mb", "gpu_peak_reserved_mb"] if device == "cuda" else []
    print(
        f"\n3. Training ({kind} model, {results['dtype']}; median over repeats [min-max]; memory in MiB)\n"
        + table(results["training"], columns)
    )
    for pair, by_batch in results["vs_official"].items():
        for batch, ratio in by_batch.items():
            if ratio:
                print(f"{pair} at batch {batch}, paired by repeat: " + ", ".join(f"{k} {v}" for k, v in ratio.items()))

    stats = token_stats(rows, lengths, processor, num_crops=num_crops)
    this_model, full_size = model_shapes(AutoConfig.from_pretrained(model_dir)), model_shapes(Phi3VConfig())
    results["flops_this_model"] = analytic_table(this_model, stats, args.batch_size, gpu=device == "cuda")
    full_stats = token_stats(rows, lengths, processor, num_crops=16)
    results["flops_full_size"] = analytic_table(full_size, full_stats, args.batch_size)
    results["head_share"] = {name: head_share(s) for name, s in (("this_model", this_model), ("full_size", full_size))}
    print(
        f"\n4. FLOPs per sample, analytic. The LM head is {results['head_share']['this_model']:.0%} of the per-token "
        f"weights of this run's model and {results['head_share']['full_size']:.1%} of the full-size model's: "
        "what the head costs (and what scoring only the answer saves) is far larger here than at full size."
        f"\n4a. This run's model ({kind}, num_crops {num_crops}, batch {args.batch_size}, {device}) "
        + flops_table(results["flops_this_model"], 1e9, "GFLOP")
    )
    print(
        f"4b. Full-size Phi-3-Vision on a GPU (num_crops 16, batch {args.batch_size}, these rows' token counts) "
        + flops_table(results["flops_full_size"], 1e12, "TFLOP")
        + "\n"
        + FLOPS_FORMULA
    )
    if device == "cuda":
        peak = next((v for k, v in PEAK_BF16.items() if k in (results["gpu"] or "")), None)
        flops = {row["mode"]: row["model"] for row in results["flops_full_size"]}
        for run in runs:
            if not run.get("oom") and peak and kind == "full" and num_crops == 16:
                run["mfu"] = run["samples_per_s_wall"] * flops[run["mode"]] / peak
        mfu = [
            {
                "mode": r["mode"],
                "batch_size": r["batch_size"],
                "mfu": spread(
                    [
                        x["mfu"]
                        for x in runs
                        if x["mode"] == r["mode"] and x["batch_size"] == r["batch_size"] and "mfu" in x
                    ]
                ),
            }
            for r in results["training"]
            if r.get("repeats")
        ]
        print(
            "\nMFU = samples/s (wall) x model FLOPs per sample (real tokens, no recompute) / peak bf16\n"
            + table(mfu, ["mode", "batch_size", "mfu"])
        )
    if "pipes" not in skip:
        real = round(sum(s["crops"] for s in full_stats) / len(full_stats))
        results["pipes"] = bench_pipes(args.batch_size, 16, real, device)
        print(
            f"\n5. pixel_values from a worker to the main process (batch {args.batch_size}, num_crops 16)\n"
            + table(
                results["pipes"],
                ["pixel_values", "mb_per_batch", "worker_copy_ms", "main_receive_ms", "pin_and_copy_to_gpu_ms"],
            )
        )
    write_results(args.out, results)
    return results


def write_results(path: str, results: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nWrote {out}")


if __name__ == "__main__":
    main()
