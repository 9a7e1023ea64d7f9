"""The real size, measured on the CPU: a random full-size Phi-3-Vision from the hub's config, its training steps'
memory beside the estimate, and its numerics. A bench (tens of minutes), not a test.

    python -m phi3v_recipe.bench.fullsize --hub_dir ../shared/phi3v/hub/Phi-3-vision-128k-instruct
        [--model DIR] [--points write,memory,numerics] [--out outputs/bench-fullsize.json]     (make bench-fullsize)

Points:

- write: ``phi3v-recipe tiny --size full`` into a scratch folder, timed; its index against the hub's.
- memory: recipes/burberry_lora.yaml's step at batch 1 and 2, every layer checkpointed (the recipe's policy),
  every 2nd, and none (batch 1), each in a fresh process (``bench/step_memory.py``): the bytes autograd saved, the
  trainable state and the peak, beside ``phi3v_recipe.memory``'s estimate of the same step (without the GPU
  margin, which a CPU has not).
- numerics: one image prompt (num_crops 4): the logits of bf16 with SDPA against fp32 with eager attention on the same
  weights (relative error, top-1 agreement), and in each, 16 greedy tokens with the KV cache against the choices
  without it (``bench/gpu.py``'s ``greedy_check``).
- numerics-long (asked for by name): the logits of the same past 4,096 tokens (two images at num_crops 16), where
  LongRoPE's long factors apply. Its fp32 eager forward needs more than 24 GiB (the fp32 model and two fp32 T x T
  score tensors per layer): a 24 GiB machine kills it.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import ArgumentParser, UserError, run
from . import scratch_dir, table, write_results

GIB = 2**30
ROOT = Path(__file__).resolve().parents[2]
STEPS = [(1, 1), (2, 1), (1, 2), (2, 2), (1, None)]  # (batch, checkpoint every n-th layer; None: off)


def point_write(hub_dir: Path, scratch: Path) -> tuple[Path, dict]:
    from ..fullsize import INDEX, write_full_size

    start = time.perf_counter()
    out = write_full_size(hub_dir, scratch / "phi3v-full")
    seconds = time.perf_counter() - start
    same = (
        json.loads((out / INDEX).read_text())["weight_map"] == json.loads((hub_dir / INDEX).read_text())["weight_map"]
    )
    return out, {"seconds": round(seconds, 1), "weight_map_is_the_hubs": same}


def point_memory(model: Path) -> list[dict]:
    from ..memory import shape_of, step_memory
    from ..phi3_v import Phi3VConfig

    shape = shape_of(Phi3VConfig.from_pretrained(model))
    rows = []
    for batch, every in STEPS:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            command = [
                sys.executable, "-m", "phi3v_recipe.bench.step_memory", "--config", str(ROOT / "recipes/burberry_lora.yaml"),
                "--model", str(model), "--batch", str(batch), "--out", out.name,
            ] + (["--no_checkpointing"] if every is None else ["--every", str(every)])  # fmt: skip
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
            if done.returncode != 0:
                raise UserError(f"the step at batch {batch} failed: {done.stderr[-1500:]}")
            step = json.loads(Path(out.name).read_text())
        parts = step_memory(
            shape, batch=step["rows"], tokens=step["tokens"], answer=step["answer"], crops=step["crops"],
            every=every, rank=64,
        )  # fmt: skip
        estimate = parts["total"] - parts["margin"]
        rows.append(
            {
                "batch": batch,
                "checkpointing": {None: "off", 1: "all", 2: "every 2nd"}[every],
                "tokens": step["tokens"],
                "saved_gib": round(step["saved"] / GIB, 3),
                "attn_probs_gib": round(step["saved_attention_probs"] / GIB, 3),
                "peak_gib": round(step["peak"] / GIB, 2),
                "estimate_gib": round(estimate / GIB, 2),
                "estimate/peak": round(estimate / step["peak"], 3),
                "seconds": round(time.perf_counter() - start),
                "measured": step,
            }
        )
        print(table(rows[-1:], [k for k in rows[-1] if k != "measured"]), flush=True)
    return rows


def point_numerics(model: Path, long: bool = False) -> dict:
    """bf16 SDPA vs fp32 eager logits on one image prompt; greedy with the KV cache against without, in each.
    ``long``: two images at num_crops 16, past original_max_position_embeddings (4,096), where LongRoPE's long
    factors apply; the logits only (an fp32 forward of it is ~50 TFLOP: over 20 minutes here). Each precision runs
    in a process of its own: the full-size bf16 and fp32 models (8.3 and 16.6 GB) do not share 24 GiB well, and a
    process does not always hand freed memory back."""
    import multiprocessing

    import torch
    from PIL import Image

    from ..conversation import conversation, render
    from ..families.phi3v import load_processor

    processor = load_processor(model, None, 16 if long else 4)
    width, height = (1344, 1344) if long else (672, 448)  # long: 16 crops an image (4 x 4 of 336)
    image = Image.new("RGB", (width, height), "white")
    for i in range(0, width, 48):  # some structure, so that the crops differ
        image.paste((i % 255, 80, 200 - i % 200), (i, 0, i + 24, height))
    images = [image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)] if long else [image]
    question = "Are these the same?" if long else "What is shown in this image?"
    text = render(processor, conversation(question, len(images)), add_generation_prompt=True)
    inputs = processor(text=text, images=images, return_tensors="pt")
    results = {"prompt_tokens": int(inputs["input_ids"].shape[1])}
    scratch = Path(tempfile.mkdtemp(prefix="numerics-"))
    torch.save(dict(inputs), scratch / "inputs.pt")
    logits = {}
    for dtype, attention in (("bfloat16", "sdpa"), ("float32", "eager")):
        child = multiprocessing.get_context("spawn").Process(
            target=one_precision, args=(str(model), dtype, attention, str(scratch), not long)
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"the {dtype} forward stopped with exit code {child.exitcode}")
        out = torch.load(scratch / f"{attention}.pt")
        logits[attention] = out.pop("logits")
        results |= {f"{k}_{attention}": v for k, v in out.items()}
    low, high = logits["sdpa"], logits["eager"]
    results["relative_logit_error"] = float((low - high).norm() / high.norm())
    results["top1_agreement"] = float((low.argmax(-1) == high.argmax(-1)).float().mean())
    return results


def one_precision(model: str, dtype: str, attention: str, scratch: str, greedy: bool) -> None:
    """In a child process: the prompt's logits (and the greedy check) in one precision, saved to scratch."""
    import torch
    from transformers import AutoModelForCausalLM

    from .. import register
    from .gpu import greedy_check

    register()
    inputs = torch.load(Path(scratch) / "inputs.pt")
    loaded = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype), attn_implementation=attention)
    with torch.no_grad():
        out = {"logits": loaded.eval()(**inputs).logits[0].float()}
        if greedy:
            out |= greedy_check(loaded, dict(inputs))
    torch.save(out, Path(scratch) / f"{attention}.pt")


def main(argv=None) -> dict:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hub_dir", type=Path, help="the hub files of Phi-3-vision-128k-instruct (config, index)")
    parser.add_argument("--model", type=Path, help="a full-size checkpoint already written (skips the write)")
    parser.add_argument("--points", default="write,memory,numerics", help="and numerics-long (~30 min here)")
    parser.add_argument("--out", default="outputs/bench-fullsize.json")
    args = parser.parse_args(argv)
    points = set(args.points.split(","))
    if args.model is None and args.hub_dir is None:
        raise UserError("give --hub_dir (the hub's config.json and index) to write the model, or --model DIR.")
    results = {"machine": f"{__import__('os').cpu_count()} CPU cores"}
    scratch = scratch_dir("bench-fullsize-")
    model = args.model
    if model is None:
        model, results["write"] = point_write(args.hub_dir, scratch)
        print(
            f"1. Written in {results['write']['seconds']} s; the hub's weight_map: {results['write']['weight_map_is_the_hubs']}"
        )
    if "memory" in points:
        print("\n3. A training step's memory (GiB): counted on the CPU beside the estimate (no GPU margin)")
        results["memory"] = point_memory(model)
        print(table(results["memory"], [k for k in results["memory"][0] if k != "measured"]))
    if "numerics" in points:
        results["numerics"] = point_numerics(model)
        print("\n5. Numerics at full size\n" + table([results["numerics"]], list(results["numerics"])))
    if "numerics-long" in points:  # not in the default points: ~30 minutes here
        results["numerics_long"] = point_numerics(model, long=True)
        print("\n5. Numerics past 4,096 tokens\n" + table([results["numerics_long"]], list(results["numerics_long"])))
    write_results(args.out, results)
    return results


if __name__ == "__main__":
    run(main)
