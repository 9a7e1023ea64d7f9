"""The real size, measured on the CPU: a random full-size Phi-3-Vision from the hub's config, the GPU recipes
trained on it, their memory beside the estimate, merges, numerics and the bench. A bench (hours), not a test.

    python -m phi3v_recipe.bench.fullsize --hub_dir ../shared/phi3v/hub/Phi-3-vision-128k-instruct [--model DIR]
        [--points write,train,memory,fsdp,merge,merge-phi4mm,numerics,numerics-long,bench] [--phi35v_model DIR]
        [--phi4mm_model DIR] [--out outputs/bench-fullsize.json]                           (make bench-fullsize)

Points (all by default; the numbers are the issue's):

1. write: ``phi3v-recipe tiny --size full`` into a scratch folder, timed; its index against the hub's (skipped with
   ``--model``, a full-size checkpoint already written).
2. train: every GPU recipe that is not full fine-tuning, through ``phi3v_recipe.smoke`` on the full-size model of
   its family (its twin's rows, no evaluation, the CPU under bf16 autocast): 2 steps with a checkpoint each, then
   resumed to step 3; the process's peak resident memory; what stops a recipe that does not fit (``TRAINED``;
   ``--recipes`` for some; Phi-3.5-Vision's recipe needs ``--phi35v_model``, Phi-4-multimodal's model is written
   unless given).
3. memory: recipes/burberry_lora.yaml's step at batch 1 and 2, every layer checkpointed (the recipe's policy),
   every 2nd, and none (batch 1), each in a fresh process (``bench/step_memory.py``): the bytes autograd saved, the
   trainable state and the peak, beside ``phi3v_recipe.memory``'s estimate of the same step (without the GPU
   margin, which a CPU has not). fsdp: burberry_full_fsdp's step under FSDP over two processes on the model cut to 2
   decoder layers, beside the estimate for one of two GPUs.
4. merge, merge-phi4mm: ``predict --merge`` at full size (Phi-4-multimodal's model written into scratch unless
   ``--phi4mm_model``; ``--qlora_adapter``: a trained QLoRA adapter too, onto the bf16 base): the layout and dtype
   against the base's, the peak memory, the logits against the adapted base.
5. numerics: one image prompt (num_crops 4): bf16 SDPA's logits against fp32 eager's on the same weights (relative
   error, top-1 agreement), and in each 16 greedy tokens with the KV cache against the choices without it
   (``bench/gpu.py``'s ``greedy_check``); fp32 SDPA's logits too, against fp32 eager's: the reference that stands in
   for eager past 4,096 tokens. numerics-long: a prompt past 4,096 tokens (two images at num_crops 16), where
   LongRoPE's long factors apply, bf16 SDPA against fp32 SDPA (an fp32 eager forward of it needs more than 24 GiB:
   the fp32 model and two fp32 T x T score tensors per layer).
6. bench: ``python -m phi3v_recipe.bench`` on the full-size architecture, ours beside official-frozen-bs1, bf16
   (``BENCH``).
"""

import json
import os
import re
import shutil
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


def estimated(shape, step: dict, **settings) -> tuple[dict, float]:
    """``phi3v_recipe.memory``'s parts for a counted step's batch, and their sum without the GPU margin."""
    from ..memory import step_memory

    parts = step_memory(
        shape, batch=step["rows"], tokens=step["tokens"], answer=step["answer"], crops=step["crops"], **settings
    )
    return parts, parts["total"] - parts["margin"]


def point_memory(model: Path) -> list[dict]:
    from ..memory import shape_of
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
        parts, estimate = estimated(shape, step, every=every, rank=64)
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


# The GPU recipes trained at full size (point 2), each at its own num_crops, LoRA, quantization and checkpointing,
# with what is set over it here: batch 1 where a row takes minutes on the CPU; ucf101_lora's own 8 frames (its twin's
# data keys say 4). nlvr2_lora, ucf101_lora and phi4mm_burberry_lora need more than 24 GiB by the estimate: they run
# to show where they stop.
BATCH_1 = ["--per_device_train_batch_size", "1"]
TRAINED = {"llava_instruct_lora": [], "burberry_lora": BATCH_1, "docvqa_lora": BATCH_1, "burberry_qlora": BATCH_1,
           "phi35v_burberry_lora": BATCH_1, "ucf101_lora": ["--max_frames", "8"], "nlvr2_lora": [],
           "phi4mm_burberry_lora": []}  # fmt: skip


# Point 6: the model written by the bench itself (the same architecture), bf16 as a GPU runs it, the cookbook's
# scripts' batch 1, num_crops 4 (16 would take four times as long here), the two modes interleaved.
BENCH = ["--device", "cpu", "--model", "full", "--dtype", "bfloat16", "--modes", "ours,official-frozen-bs1",
         "--batch_size", "1", "--num_crops", "4", "--repeats", "2", "--steps", "2", "--warmup", "1", "--rows", "8",
         "--skip", "preprocessing,pipes,padding"]  # fmt: skip


def point_train(model: Path, scratch: Path, recipes: list[str], others: dict[str, Path | None]) -> list[dict]:
    """Each recipe through ``phi3v_recipe.smoke`` on the full-size model of its family (``others``: Phi-3.5-Vision's
    and Phi-4-multimodal's, by the recipe name's prefix; the twin's rows, the CPU under bf16 autocast, a checkpoint
    every step): 2 steps, then resumed to step 3. Each run in a process of its own; its peak resident memory read from
    the kernel (``ru_maxrss`` of the finished child), also when it is killed for memory."""
    rows = []
    for recipe in recipes:
        prefix = next((name for name in others if recipe.startswith(name)), None)
        base = others[prefix] if prefix else model
        if base is None:
            rows.append({"recipe": recipe, "result": f"not run: give --{prefix}_model (a full-size checkpoint)"})
            continue
        out = scratch / f"train-{recipe}"
        command = [
            sys.executable, "-m", "phi3v_recipe.smoke", "--config", str(ROOT / f"recipes/{recipe}.yaml"),
            "--model_name_or_path", str(base), "--use_cpu", "true", "--bf16", "true", "--save_strategy", "steps",
            "--save_steps", "1", "--logging_steps", "1", "--eval_fraction", "0", "--output_dir", str(out),
        ] + TRAINED.get(recipe, [])  # fmt: skip
        row = {"recipe": recipe, "set": " ".join(TRAINED.get(recipe, [])) or "nothing"}
        for name, extra in (
            ("2 steps", ["--max_steps", "2"]),
            ("resumed", ["--max_steps", "3", "--resume_from_checkpoint", "true"]),
        ):
            start = time.perf_counter()
            with open(scratch / f"train-{recipe}.log", "w") as log:
                child = subprocess.Popen(command + extra, stdout=log, stderr=subprocess.STDOUT)
                _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not the largest of all so far
            row[f"{name} s"] = round(time.perf_counter() - start)
            row["peak_rss_gib"] = max(row.get("peak_rss_gib", 0), round(usage.ru_maxrss / 2**20, 1))
            output = (scratch / f"train-{recipe}.log").read_text()
            first = re.search(r"'num_tokens': '(\d+)'", output)  # the first step's tokens, all rows of its batch
            row.setdefault("step 1 tokens", int(first.group(1)) if first else None)
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                row["result"] = "killed for memory" if code == -9 else f"failed: {output.strip().splitlines()[-1:]}"
                break
            history = json.loads(
                (out / f"checkpoint-{3 if name == 'resumed' else 2}" / "trainer_state.json").read_text()
            )
            losses = [entry["loss"] for entry in history["log_history"] if "loss" in entry]
            row[f"{name} loss"] = losses[-1] if losses else None
            if name == "resumed":
                row["result"] = "resumed" if "Resuming from" in output else "did not resume"
                row["adapter"] = (out / "adapter_model.safetensors").is_file()
        rows.append(row)
        print(table(rows[-1:], list(rows[-1])), flush=True)
        shutil.rmtree(out, ignore_errors=True)  # checkpoints hold GBs of optimiser state
    return rows


def point_fsdp(model: Path, scratch: Path, layers: int = 2, batches=(1, 2)) -> list[dict]:
    """recipes/burberry_full_fsdp.yaml's step (full fine-tuning, fp32 weights and AdamW sharded, bf16 compute, every
    layer checkpointed) on the model cut to ``layers`` decoder layers at full width, over two processes launched with
    accelerate_configs/fsdp.yaml as on GPUs (gloo, through ``fsdp_on_cpu.py``); each process's step peak beside the
    estimate for one of two GPUs. The whole model's full fine-tuning does not fit 24 GiB even sharded over two."""
    from torch.distributed.elastic.utils.distributed import get_free_port

    from ..fullsize import cut
    from ..memory import gathered_layer, shape_of
    from ..phi3_v import Phi3VConfig

    small = cut(model, layers, scratch / f"phi3v-{layers}-layers")
    shape = shape_of(Phi3VConfig.from_pretrained(small))
    rows = []
    for batch in batches:
        out = scratch / f"fsdp-batch{batch}.json"
        command = [
            str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
            str(ROOT / "accelerate_configs/fsdp.yaml"), "--num_processes", "2", "--mixed_precision", "bf16",
            "--main_process_port", str(get_free_port()), str(Path(__file__).parent / "fsdp_on_cpu.py"),
            "-m", "phi3v_recipe.bench.step_memory", "--config", str(ROOT / "recipes/burberry_full_fsdp.yaml"),
            "--model", str(small), "--batch", str(batch), "--out", str(out),
        ]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise UserError(f"the FSDP step at batch {batch} failed: {done.stderr[-1500:]}")
        steps = [json.loads(path.read_text()) for path in (out, out.with_suffix(".rank1.json"))]
        step = max(steps, key=lambda s: s["step_peak"])
        parts, estimate = estimated(shape, step, every=1, rank=0, full=True, gpus=2)
        rows.append(
            {
                "layers": layers,
                "batch": batch,
                "tokens": step["tokens"],
                "held_gib": round((step["weights"] + step["trainable"]) / GIB, 3),  # fp32 shards, AdamW's
                "held_est": round((parts["weights"] - gathered_layer(shape) + parts["trainable_state"]) / GIB, 3),
                "saved_gib": round(step["saved"] / GIB, 3),
                "activations_est": round(parts["activations"] / GIB, 3),
                "step_peak_gib": round(step["step_peak"] / GIB, 3),
                "estimate_gib": round(estimate / GIB, 3),
                "estimate/peak": round(estimate / step["step_peak"], 3),
                "seconds": round(time.perf_counter() - start),
                "measured": steps,
            }
        )
        print(table(rows[-1:], [k for k in rows[-1] if k != "measured"]), flush=True)
    return rows


def point_merge(base: Path, scratch: Path, trained: Path | None = None) -> dict:
    """``predict --merge`` of an adapter with nonzero weights onto the full-size base (either family): the merged
    folder's index and dtype against the base's, the peak memory predict prints, and one image prompt's logits of the
    merged model against the base with the adapter (each model in a process of its own, bf16). The adapter has the
    shipped recipe's shape: Phi-3-Vision's LoRA r 64 on the four decoder projections; Phi-4-multimodal's own vision
    LoRA (rank 256) and its image embedding trained whole. Its weights are random, not trained, so that it changes
    the logits well beyond bf16's rounding: the check must see the merge keep that change. ``trained``: a trained
    adapter of ``base`` instead (a QLoRA one, merged onto the bf16 base as users do)."""
    import multiprocessing

    import torch

    name = trained.name if trained else base.name
    adapter, merged = trained or scratch / f"{name}-adapter", scratch / f"{name}-merged"
    spawn = multiprocessing.get_context("spawn")
    if trained is None:
        child = spawn.Process(target=make_adapter, args=(str(base), str(adapter)))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"making the adapter stopped with exit code {child.exitcode}")
    image = scratch / "merge-prompt.png"
    stripes(672, 448).save(image)
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable, "-m", "phi3v_recipe.predict", "--adapter", str(adapter), "--image", str(image),
            "--max_new_tokens", "1", "--merge", str(merged),
        ],
        capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    if done.returncode != 0:
        raise UserError(f"the merge failed: {done.stderr[-1500:]}")
    seconds = time.perf_counter() - start
    peak = float(done.stdout.split("peak memory of this process: ")[1].split(" GiB")[0])
    logits = {}
    for name, path in (("base", base), ("adapted", adapter), ("merged", merged)):  # all on the merged folder's prompt
        args = (str(path), str(merged), str(image), str(scratch / f"{name}.pt"))
        child = spawn.Process(target=prompt_logits, args=args)
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"the {name} model's forward stopped with exit code {child.exitcode}")
        logits[name] = torch.load(scratch / f"{name}.pt")
    adapted = logits["adapted"]
    ours, theirs = tensors_of(merged), tensors_of(base)
    return {
        "model": base.name,
        "adapter": trained.name if trained else "random, the recipe's shape",
        "prompt_tokens": int(adapted.shape[0]),
        "merge_seconds": round(seconds),
        "merge_peak_gib": peak,
        "layout_is_the_bases": {n: (f, s) for n, (f, s, _) in ours.items()}
        == {n: (f, s) for n, (f, s, _) in theirs.items()},
        "files": len({f for f, _, _ in ours.values()}),
        "dtypes": sorted({d for _, _, d in ours.values()}),
        "gb": round(sum(s for _, s, _ in ours.values()) / 1e9, 3),
        "adapter_changes_logits": float((logits["base"] - adapted).norm() / adapted.norm()),
        "merged_vs_adapted": float((logits["merged"] - adapted).norm() / adapted.norm()),
        "merged_top1_agreement": float((logits["merged"].argmax(-1) == adapted.argmax(-1)).float().mean()),
    }


def tensors_of(folder: Path) -> dict[str, tuple[str, int, str]]:
    """Each tensor of a checkpoint folder: (its file, its bytes, its dtype), read from the safetensors headers."""
    import math

    from safetensors import safe_open

    from ..export import INDEX

    index = folder / INDEX
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    )
    out = {}
    for file in files:
        with safe_open(folder / file, "pt") as weights:
            for name in weights.keys():
                piece = weights.get_slice(name)
                dtype = piece.get_dtype()
                size = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "U8": 1, "I8": 1}[dtype]
                out[name] = (file, math.prod(piece.get_shape()) * size, dtype)
    return out


def stripes(width: int, height: int):
    """A white image with coloured stripes: some structure, so that its crops differ."""
    from PIL import Image

    image = Image.new("RGB", (width, height), "white")
    for i in range(0, width, 48):
        image.paste((i % 255, 80, 200 - i % 200), (i, 0, i + 24, height))
    return image


def make_adapter(base: str, out: str) -> None:
    """In a child process: an adapter of the shipped recipe's shape on ``base`` (see ``point_merge``), saved."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from .. import register
    from ..families import family_of

    register()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    family = family_of(base)
    generator = torch.Generator().manual_seed(0)
    if family.NAME == "phi4mm":  # its own vision LoRA (random B in the written model) and the image embedding
        peft = family.peft_model(model, None, base)
        trained = [p for n, p in peft.named_parameters() if "modules_to_save" in n]
    else:
        targets = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]  # recipes/burberry_lora.yaml's
        peft = get_peft_model(model, LoraConfig(r=64, lora_alpha=128, lora_dropout=0.0, target_modules=targets))
        trained = [p for n, p in peft.named_parameters() if "lora_B" in n]  # zero as PEFT makes them
    with torch.no_grad():
        for weight in trained:  # as a few hundred steps might move them
            weight.add_(torch.empty(weight.shape).normal_(0.0, 0.002, generator=generator).to(weight.dtype))
    peft.save_pretrained(out)


def prompt_logits(path: str, processor_dir: str, image: str, out: str) -> None:
    """In a child process: one image prompt's logits from ``path`` (a model or an adapter, as predict loads it), the
    prompt made by ``processor_dir``'s processor (the crops its files say), so that every model reads the same one."""
    import torch
    from PIL import Image

    from ..conversation import conversation, render
    from ..families import family_of
    from ..predict import load_for_inference

    model, _ = load_for_inference(path)
    processor = family_of(processor_dir).load_processor(processor_dir)
    text = render(processor, conversation("What is shown in this image?", 1), add_generation_prompt=True)
    inputs = processor(text=text, images=[Image.open(image).convert("RGB")], return_tensors="pt")
    with torch.no_grad():
        torch.save(model(**inputs).logits[0].float(), out)


def write_phi4mm(scratch: Path) -> Path:
    """A random full-size Phi-4-multimodal (``phi3v-recipe tiny DIR --family phi4mm --size full``) in scratch."""
    from ..families.phi4mm import write_full_size
    from ..tiny import CORPUS

    write_full_size(scratch / "phi4mm-full", CORPUS)
    return scratch / "phi4mm-full"


def point_numerics(model: Path, long: bool = False) -> dict:
    """bf16 SDPA vs fp32 eager logits on one image prompt; greedy with the KV cache against without, in each; fp32
    SDPA's logits against fp32 eager's. ``long``: two images at num_crops 16, past original_max_position_embeddings
    (4,096), where LongRoPE's long factors apply; bf16 SDPA against fp32 SDPA, the logits only (an fp32 forward of
    it is ~50 TFLOP: over 20 minutes here). Each precision runs
    in a process of its own: the full-size bf16 and fp32 models (8.3 and 16.6 GB) do not share 24 GiB well, and a
    process does not always hand freed memory back."""
    import multiprocessing

    import torch
    from PIL import Image

    from ..conversation import conversation, render
    from ..families.phi3v import load_processor

    processor = load_processor(model, None, 16 if long else 4)
    image = stripes(1344, 1344) if long else stripes(672, 448)  # long: 16 crops an image (4 x 4 of 336)
    images = [image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)] if long else [image]
    question = "Are these the same?" if long else "What is shown in this image?"
    text = render(processor, conversation(question, len(images)), add_generation_prompt=True)
    inputs = processor(text=text, images=images, return_tensors="pt")
    results = {"prompt_tokens": int(inputs["input_ids"].shape[1])}
    scratch = Path(tempfile.mkdtemp(prefix="numerics-"))
    torch.save(dict(inputs), scratch / "inputs.pt")
    # fp32 eager is the reference; past 4,096 tokens it does not fit 24 GiB, and fp32 SDPA (the same sums in fp32,
    # no T x T tensors) stands in for it there, checked against it on the short prompt.
    runs = [("bfloat16", "sdpa", not long), ("float32", "sdpa", False)] + (
        [] if long else [("float32", "eager", True)]
    )
    logits = {}
    for dtype, attention, greedy in runs:
        child = multiprocessing.get_context("spawn").Process(
            target=one_precision, args=(str(model), dtype, attention, str(scratch), greedy)
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"the {dtype} {attention} forward stopped with exit code {child.exitcode}")
        out = torch.load(scratch / f"{dtype}-{attention}.pt")
        logits[dtype, attention] = out.pop("logits")
        short = {"bfloat16": "bf16", "float32": "fp32"}[dtype]
        results |= {f"{k}_{short}_{attention}": v for k, v in out.items()}
    reference = logits["float32", "sdpa" if long else "eager"]
    results["reference"] = "fp32 sdpa" if long else "fp32 eager"
    compared = {"": logits["bfloat16", "sdpa"]} | ({} if long else {"fp32_sdpa_": logits["float32", "sdpa"]})
    for name, low in compared.items():
        results[f"{name}relative_logit_error"] = float((low - reference).norm() / reference.norm())
        results[f"{name}top1_agreement"] = float((low.argmax(-1) == reference.argmax(-1)).float().mean())
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
    torch.save(out, Path(scratch) / f"{dtype}-{attention}.pt")


POINTS = "write,train,memory,fsdp,merge,merge-phi4mm,numerics,numerics-long,bench"


def main(argv=None) -> dict:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hub_dir", type=Path, help="the hub files of Phi-3-vision-128k-instruct (config, index)")
    parser.add_argument("--model", type=Path, help="a full-size checkpoint already written (skips the write)")
    parser.add_argument("--points", default=POINTS, help=f"comma-separated, from {POINTS} (default: all)")
    parser.add_argument("--recipes", default=",".join(TRAINED), help="train: these recipes (default: all of them)")
    parser.add_argument(
        "--phi35v_model", type=Path, help="a full-size Phi-3.5-Vision already written (train: its recipe)"
    )
    parser.add_argument(
        "--phi4mm_model",
        type=Path,
        help="a full-size Phi-4-multimodal already written (merge-phi4mm; train: its recipes)",
    )
    parser.add_argument("--qlora_adapter", type=Path, help="merge: also this adapter, trained on --model in 4 bits")
    parser.add_argument("--out", default="outputs/bench-fullsize.json")
    args = parser.parse_args(argv)
    points = set(args.points.split(","))
    if points - set(POINTS.split(",")):
        raise UserError(f"--points: unknown {sorted(points - set(POINTS.split(',')))}; choose from {POINTS}.")
    if args.model is None and args.hub_dir is None:
        raise UserError("give --hub_dir (the hub's config.json and index) to write the model, or --model DIR.")
    results = {"machine": f"{os.cpu_count()} CPU cores"}
    scratch = scratch_dir("bench-fullsize-")
    model = args.model
    wants_phi4mm = "merge-phi4mm" in points or ("train" in points and "phi4mm" in args.recipes)
    if wants_phi4mm and args.phi4mm_model is None:
        args.phi4mm_model = write_phi4mm(scratch)
    if model is None:
        model, results["write"] = point_write(args.hub_dir, scratch)
        written = results["write"]
        print(f"1. Written in {written['seconds']} s; the hub's weight_map: {written['weight_map_is_the_hubs']}")

    def show(key: str, title: str, rows: list[dict]) -> None:
        results[key] = rows
        columns = list(dict.fromkeys(k for row in rows for k in row if k != "measured"))
        print(f"\n{title}\n" + table(rows, columns), flush=True)

    if "train" in points:
        show(
            "train",
            "2. The recipes trained at full size: 2 steps, resumed to 3",
            point_train(
                model, scratch, args.recipes.split(","), {"phi35v": args.phi35v_model, "phi4mm": args.phi4mm_model}
            ),
        )
    if "memory" in points:
        show(
            "memory",
            "3. A training step's memory (GiB): counted on the CPU beside the estimate (no GPU margin)",
            point_memory(model),
        )
    if "fsdp" in points:
        show(
            "fsdp",
            "3. Full fine-tuning under FSDP over two processes, 2 decoder layers (GiB, per process)",
            point_fsdp(model, scratch),
        )
    if points & {"merge", "merge-phi4mm"}:
        bases = [model] if "merge" in points else []
        bases += [args.phi4mm_model] if "merge-phi4mm" in points else []
        merges = [point_merge(base, scratch) for base in bases]
        if args.qlora_adapter and "merge" in points:  # a trained QLoRA adapter, merged onto the bf16 base
            merges.append(point_merge(model, scratch, args.qlora_adapter))
        show("merge", "4. A merge at full size", merges)
    if "numerics" in points:
        show("numerics", "5. Numerics at full size", [point_numerics(model)])
    if "numerics-long" in points:
        show("numerics_long", "5. Numerics past 4,096 tokens", [point_numerics(model, long=True)])
    if "bench" in points:
        print("\n6. The bench at full size: ours beside official-frozen-bs1, bf16 on the CPU", flush=True)
        bench = scratch / "bench.json"
        subprocess.run([sys.executable, "-m", "phi3v_recipe.bench", *BENCH, "--out", str(bench)], check=True)
        results["bench"] = json.loads(bench.read_text())
    write_results(args.out, results)
    return results


if __name__ == "__main__":
    run(main)
