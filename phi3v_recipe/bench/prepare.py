"""Data preparation at scale: ours (rows checked in parallel from image headers, kept for the next start) beside the
preparation this project ran before (one process, every image decoded, nothing kept), on photo-sized JPEGs.

    python -m phi3v_recipe.bench.prepare --rows 1000,10000,50000 --repeats 2

Every measurement is a fresh process (so its peak memory is its own): `sequential` is the previous preparation
restated (``prepare_sequentially`` below), `ours, first start` finds no kept rows, `ours, second start` reads back
what the first one kept. CPU s counts the process and its children (the checking processes); peak RSS is the main
process's, and the tree's peak PSS beside it (the main process and its checking processes, sampled every 50 ms as
the training bench samples them: a page a worker shares with the process it was forked from counts once; a child's
own ``ru_maxrss`` counted those pages for it too). Rows name a pool of distinct photos in turn (writing 50,000 distinct
photos would take ~13 GB), so the files are in the page cache after the first pass, as for both sides alike.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

PHOTO_SIZES = [(750, 1000), (1000, 750), (1500, 2000), (2000, 1500), (1200, 1200)]


def write_photos(folder: Path, count: int) -> list[Path]:
    """Photo-sized JPEGs (750x1000 to 2000x1500) with per-pixel detail, so that decoding costs what a photo's does."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        width, height = PHOTO_SIZES[i % len(PHOTO_SIZES)]
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        base = np.stack([x * 255 / width, y * 255 / height, (x + y) % 256], -1)
        pixels = np.clip(base + rng.normal(0, 24, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"photo{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def write_rows(path: Path, rows: int, photos: list[Path]) -> Path:
    import csv

    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["product_code", "title", "category3_code", "full_price", "local_image_path"])
        for i in range(rows):
            photo = photos[i % len(photos)]
            writer.writerow([f"P{i:07d}", f"Large Navy Canvas Car Coat {i % 97}", "COATS", 1590 + i % 13, photo.name])
    return path


def prepare_sequentially(args, processor, max_length):
    """The preparation as it was before rows were checked in parallel and kept (commit 958c3b7), restated for the
    sources this bench writes: one process, every image decoded in full, the chat template rendered and tokenised
    per row, the results added as four columns."""
    from PIL import Image

    from ..answers import as_label
    from ..conversation import conversation_length
    from ..data import BadRow, resolve
    from ..data.checks import check_conversation, control_tokens
    from ..data.formats import image_column, to_conversation
    from ..data.sources import image_refs, load_table
    from ..images import upright_size

    def check_image(path, max_pixels):
        file = Path(path)
        if not file.is_file():
            raise BadRow("missing image file", path)
        try:
            with Image.open(file) as image:
                if image.width * image.height > max_pixels:
                    raise BadRow("image over max_image_pixels", path)
                image.load()
                return upright_size(image)
        except BadRow:
            raise
        except Exception as err:
            raise BadRow("unreadable image", f"{path} ({err})") from None

    table, base_dir = load_table(args)
    args = resolve(args, table)
    column, is_video = image_column(args.data_format, table.column_names, args)
    refs = image_refs(table, args, column, base_dir, is_video)
    table = table.remove_columns(column)
    tokens = control_tokens(processor.tokenizer)
    keep, records, skipped = [], [], []
    for index, row in enumerate(table):
        try:
            images = refs[index]
            messages, answers = to_conversation(row, args.data_format, args, len(images))
            check_conversation(messages, len(images), tokens)
            if args.scoring() == "accuracy" and as_label(answers[0], args.labels) is None:
                raise BadRow("answer not in labels")
            sizes = [check_image(path, args.max_image_pixels) for path in images]
            length = conversation_length(processor, messages, sizes)
            if max_length is not None and length > max_length:
                raise BadRow("longer than max_length")
        except BadRow as err:
            skipped.append((index, err))
            continue
        keep.append(index)
        records.append({"images": images, "messages": messages, "answers": answers, "length": length})
    kept = table.select(keep)
    for name in ("images", "messages", "answers", "length"):
        kept = kept.add_column(name, [r[name] for r in records])
    return kept, skipped


def measure(spec: dict) -> dict:
    """One preparation in this (fresh) process."""
    from transformers import AutoProcessor

    import phi3v_recipe  # noqa: F401  (registers phi3_v)

    from ..data import DataArguments, prepare_data
    from .measure import status_mb, tree_peak_memory, vm_hwm_mb

    processor = AutoProcessor.from_pretrained(spec["model_dir"], num_crops=16)
    args = DataArguments(dataset=spec["csv"], eval_fraction=0, prepared_dir=spec["prepared_dir"])
    peak_anon = [0.0]
    done = threading.Event()

    def sample_anonymous_memory():  # RSS also counts the pages of memory-mapped files read: reclaimable, not held
        while not done.is_set():
            peak_anon[0] = max(peak_anon[0], status_mb("RssAnon"))  # heap and stacks: what the process holds
            done.wait(0.02)

    sampler = threading.Thread(target=sample_anonymous_memory, daemon=True)
    sampler.start()
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    with tree_peak_memory(os.getpid()) as tree:
        if spec["mode"] == "sequential":
            kept, _ = prepare_sequentially(args, processor, 8192)
            rows = len(kept)
        else:
            rows = len(prepare_data(args, processor, 8192, num_proc=spec["workers"]).train)
    wall = time.perf_counter() - start_wall
    done.set()
    sampler.join()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - start_cpu + children.ru_utime + children.ru_stime
    return {
        "rows_kept": rows,
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mb": vm_hwm_mb(),
        "peak_anon_mb": peak_anon[0],
        "tree_peak_pss_mb": tree["tree_peak_pss_mb"],
    }


def run_child(spec: dict, timeout: float) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "phi3v_recipe.bench.prepare", "--run", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{spec['mode']} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def spread(values):
    middle = statistics.median(values)
    return f"{middle:.3g} [{min(values):.3g}-{max(values):.3g}]" if len(values) > 1 else f"{middle:.3g}"


def decode_and_header_ms(photos: list[Path]) -> tuple[float, float]:
    from PIL import Image

    def timed(action):
        start = time.process_time()
        for path in photos:
            with Image.open(path) as image:
                action(image)
        return (time.process_time() - start) / len(photos) * 1000

    return timed(lambda image: image.load()), timed(lambda image: image.size)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1000,10000,50000", help="table sizes, comma-separated")
    parser.add_argument("--photos", type=int, default=200, help="distinct photos the rows name in turn")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=None, help="ours: checking processes (default: every core)")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds one measurement may take")
    parser.add_argument("--out", default="outputs/bench-prepare.json")
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args(argv)
    if args.run:
        print("RESULT " + json.dumps(measure(json.loads(args.run))), flush=True)
        return {}

    from ..tiny import write_tiny_checkpoint
    from . import scratch_dir

    workers = args.workers or len(os.sched_getaffinity(0))
    work = scratch_dir("phi3v-bench-prepare-")
    model_dir = write_tiny_checkpoint(work / "tiny")  # the real tokenizer's token counts do not change the work
    print(f"Writing {args.photos} photo-sized JPEGs in {work} (removed at the end) ...", flush=True)
    photos = write_photos(work / "data", args.photos)
    decode_ms, header_ms = decode_and_header_ms(photos[:20])
    results = {"workers": workers, "photos": args.photos, "decode_ms": decode_ms, "header_ms": header_ms, "runs": []}
    table = []
    for rows in [int(n) for n in args.rows.split(",")]:
        csv_path = write_rows(work / "data" / f"rows{rows}.csv", rows, photos)
        runs = {"sequential": [], "ours, first start": [], "ours, second start": []}
        for repeat in range(args.repeats):
            prepared_dir = str(work / f"prepared-{rows}-{repeat}")
            for mode in runs:  # the two starts of ours share their kept rows, each repeat afresh
                spec = {"mode": mode, "csv": str(csv_path), "model_dir": str(model_dir), "workers": workers}
                spec["prepared_dir"] = prepared_dir
                print(f"  {rows} rows: {mode}, repeat {repeat + 1}", flush=True)
                result = run_child(spec, args.timeout) | {"mode": mode, "rows": rows, "repeat": repeat}
                runs[mode].append(result)
                results["runs"].append(result)
        baseline_wall = statistics.median(r["wall_s"] for r in runs["sequential"])
        for mode, group in runs.items():
            table.append(
                {
                    "rows": rows,
                    "mode": mode,
                    "cpu_s": spread([r["cpu_s"] for r in group]),
                    "wall_s": spread([r["wall_s"] for r in group]),
                    "peak_rss_mb": spread([r["peak_rss_mb"] for r in group]),
                    "peak_anon_mb": spread([r["peak_anon_mb"] for r in group]),
                    "tree_peak_pss_mb": spread([r["tree_peak_pss_mb"] for r in group]),
                    "wall_vs_sequential": f"{baseline_wall / statistics.median(r['wall_s'] for r in group):.1f}x",
                    "cpu_ms_per_row": f"{statistics.median(r['cpu_s'] for r in group) / rows * 1000:.2f}",
                }
            )
    results["table"] = table
    from . import table as format_table
    from . import write_results

    print(
        f"\nData preparation ({workers} checking processes for ours; {args.photos} distinct JPEGs of 750x1000 to "
        f"2000x1500, decoding one costs {decode_ms:.1f} ms of CPU, reading its header {header_ms:.2f} ms; median "
        f"[min-max] of {args.repeats} repeats; memory in MiB)\n"
        + format_table(
            table,
            [
                "rows",
                "mode",
                "cpu_s",
                "cpu_ms_per_row",
                "wall_s",
                "wall_vs_sequential",
                "peak_rss_mb",
                "peak_anon_mb",
                "tree_peak_pss_mb",
            ],
        )
    )
    sizes = sorted({r["rows"] for r in results["runs"]})
    if len(sizes) >= 2:
        small, large = sizes[-2], sizes[-1]
        for mode in ("sequential", "ours, first start"):

            def median(key, n, mode=mode):
                return statistics.median(r[key] for r in results["runs"] if r["mode"] == mode and r["rows"] == n)

            keys = ("cpu_s", "wall_s", "peak_rss_mb", "peak_anon_mb")
            per_row = {k: (median(k, large) - median(k, small)) / (large - small) for k in keys}
            million = {k: median(k, large) + per_row[k] * (1_000_000 - large) for k in per_row}
            results.setdefault("million_rows_estimate", {})[mode] = million
            print(
                f"Estimate for 1,000,000 rows ({mode}; extrapolated from the slope between {small} and {large} rows, "
                f"not measured): {million['cpu_s'] / 60:.0f} CPU min, {million['wall_s'] / 60:.0f} min wall, "
                f"{million['peak_rss_mb']:.0f} MiB peak RSS, {million['peak_anon_mb']:.0f} MiB of it anonymous"
            )
    write_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
