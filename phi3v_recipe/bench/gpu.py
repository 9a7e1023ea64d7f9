"""One GPU command: the full-size model's training step side by side with the cookbook's, its memory beside
``phi3v-recipe plan``'s estimate, its numerics, in minutes, with random weights (nothing to download).

    python -m phi3v_recipe.bench.gpu [--size full|tiny] [--batches 1,2,4] [--steps 3] [--out outputs/gpu-check.json]
    make gpu-check

It needs torch, transformers and peft only (what a bare GPU machine has): the model is built in memory from
``Phi3VConfig``'s defaults (the hub config's values), the rows are made in memory (one photo-sized image at
num_crops 16, a 20-token answer). Parts:

1. Steps: ``ours`` (LoRA r 64 on the decoder, every layer checkpointed, loss at the labelled positions:
   ``phi3v_recipe.loss``) beside the cookbook's ``official-frozen`` (LoRA r 64 on the decoder and ``lm_head``, the
   model's own loss over every position, checkpointing on) at each batch size, and ``official-frozen-bs1`` (its
   scripts' per-device batch 1): samples/s over the timed steps after one warm-up, the peak memory
   (``max_memory_allocated``; on the CPU the allocator's events), MFU (FLOPs from ``phi3v_recipe.flops`` over the
   GPU's dense bf16 peak from ``plan.GPUS``), and ours' peak beside ``phi3v_recipe.memory``'s estimate.
2. Numerics: the logits of bf16 with SDPA against fp32 with eager attention on one row (relative error, top-1
   agreement); 16 greedy tokens with the KV cache against the choices without it (``greedy_check``).
3. Training with resume (only where TRL and datasets are installed): ``phi3v_recipe.train`` on the tiny model for 2
   steps with a checkpoint, then resumed to 3.

On the CPU (``--size tiny``, the default tests) every part runs at tiny size: no GPU numbers, every code path.
"""

import contextlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import ArgumentParser, run

GIB = 2**30
ANSWER = 20
IMAGE = (1344, 1008)  # a photo's size: 16 crops at num_crops 16


def device_and_peak():
    import torch

    from ..plan import GPUS

    if not torch.cuda.is_available():
        return "cpu", "CPU", None
    name = torch.cuda.get_device_name(0)
    peak = next((flops for key, (flops, _) in GPUS.items() if key.split("-")[0] in name), None)
    return "cuda", name, peak


def build_model(size: str, device: str):
    """A random Phi-3-Vision in bf16 on ``device``: the hub config's values (full) or the tiny test model's."""
    import torch

    from .. import register
    from ..phi3_v import Phi3VConfig, Phi3VForCausalLM
    from ..tiny import tiny_config_dict

    register()
    config = Phi3VConfig() if size == "full" else Phi3VConfig(**tiny_config_dict())
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = Phi3VForCausalLM(config)
    return model.to(torch.bfloat16), config


def make_batch(config, rows: int, device: str) -> dict:
    """``rows`` identical rows: a prompt with one 16-crop image and a 20-token answer, as the collator lays them out."""
    import torch

    from ..phi3_v.image_processing_phi3_v import hd_grid, num_image_tokens

    width, height = IMAGE
    *_, grid_rows, cols = hd_grid(width, height, 16)
    image = num_image_tokens(width, height, 16)
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(100, 30000, (40 + ANSWER,), generator=generator)
    ids = torch.cat([text[:10], torch.full((image,), config.image_token_id), text[10:]])
    labels = torch.full_like(ids, -100)
    labels[-ANSWER:] = ids[-ANSWER:]
    return {
        "input_ids": ids.repeat(rows, 1).to(device),
        "attention_mask": torch.ones(rows, len(ids), dtype=torch.long, device=device),
        "labels": labels.repeat(rows, 1).to(device),
        "pixel_values": torch.randn(rows, 17, 3, 336, 336, generator=generator).to(device),
        "image_sizes": torch.tensor([[grid_rows * 336, cols * 336]] * rows, device=device),
    }


@contextlib.contextmanager
def lora(model, mode: str):
    """The mode's LoRA on ``model`` for the duration (ours: the decoder; the cookbook's: the decoder and lm_head),
    with activation checkpointing of every decoder layer, as both run."""
    from peft import LoraConfig, get_peft_model

    targets = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"] + ([] if mode == "ours" else ["lm_head"])
    model.requires_grad_(False)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    adapted = get_peft_model(model, LoraConfig(r=64, lora_alpha=128, target_modules=targets)).train()
    try:
        yield adapted
    finally:
        adapted.unload()
        model.activation_checkpointing_disable()
        model.disable_input_require_grads()


def loss_of(model, mode: str, batch: dict):
    from ..loss import labelled_positions_loss

    if mode == "ours":
        return labelled_positions_loss(model, batch)[0]
    return model(**batch).loss  # the cookbook's: the model's own loss, every position through the head


def time_steps(model, mode: str, batch: dict, steps: int, device: str) -> dict:
    """One warm-up step, then ``steps`` timed: samples/s and the peak memory of the timed steps."""
    import torch

    from .step_memory import peaks_of

    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = loss_of(model, mode, batch)
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        return float(loss)

    losses = [step()]
    held = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    held += sum(t.numel() * t.element_size() for s in optimiser.state.values() for t in s.values() if t.dim())
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    profiler = torch.profiler.profile(profile_memory=True) if device == "cpu" else contextlib.nullcontext()
    start = time.perf_counter()
    with profiler:
        losses += [step() for _ in range(steps)]
        if device == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else held + peaks_of(profiler)[0]
    rows = batch["input_ids"].shape[0]
    return {"samples_per_s": rows * steps / seconds, "peak_gib": peak / GIB, "losses": losses}


def part_steps(model, config, batches: list[int], steps: int, device: str, peak_flops) -> list[dict]:
    import torch

    from ..flops import mode_flops, model_shapes
    from ..memory import shape_of, step_memory

    shapes, shape = model_shapes(config), shape_of(config)
    runs = [("ours", b) for b in batches] + [("official-frozen", b) for b in batches] + [("official-frozen-bs1", 1)]
    results = []
    for mode, rows in runs:
        batch = make_batch(config, rows, device)
        tokens = batch["input_ids"].shape[1]
        image = int((batch["input_ids"][0] == config.image_token_id).sum())
        flops = mode_flops(shapes, mode, tokens, tokens**2, ANSWER, 17, image)
        try:
            with lora(model, "ours" if mode == "ours" else "official") as adapted:
                measured = time_steps(adapted, mode, batch, steps, device)
        except torch.OutOfMemoryError:
            results.append({"mode": mode, "batch": rows, "oom": True})
            torch.cuda.empty_cache()
            continue
        row = {"mode": mode, "batch": rows, "tokens": tokens} | measured
        model_flops = flops["total"] - flops["recompute"]
        row["mfu"] = measured["samples_per_s"] * model_flops / peak_flops if peak_flops else None
        if mode == "ours":
            planned = step_memory(shape, batch=rows, tokens=tokens, answer=ANSWER, crops=17, every=1, rank=64)
            row["plan_gib"] = (planned["total"] - planned["margin"]) / GIB
            row["plan_with_margin_gib"] = planned["total"] / GIB
        results.append(row)
        if device == "cuda":
            torch.cuda.empty_cache()
    return results


def part_numerics(model, config, device: str) -> dict:
    import copy

    import torch

    batch = make_batch(config, 1, device)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    model.eval()
    with torch.no_grad():
        low = model(**inputs).logits[0].float()
        reference = copy.deepcopy(model).float()
        reference.config._attn_implementation = "eager"
        reference.set_attn_implementation("eager")
        high = reference(**inputs).logits[0]
        del reference
        prompt = {k: v[:, :-ANSWER] if k in ("input_ids", "attention_mask") else v for k, v in inputs.items()}
        greedy = greedy_check(model, prompt)
    model.train()
    return {
        "relative_logit_error": float((low - high).norm() / high.norm()),
        "top1_agreement": float((low.argmax(-1) == high.argmax(-1)).float().mean()),
    } | greedy


def greedy_check(model, prompt: dict, tokens: int = 16) -> dict:
    """Greedy decoding with the KV cache against the same choices without it: one forward over the prompt and the
    generated tokens, no cache; its argmax at each generated position must be the token generated there. (Generating
    again without the cache computes each step over a longer sequence, where bf16 rounding can flip a near tie: a
    random model's top two logits are often one bf16 step apart.) ``min_margin``: the smallest top-1 / top-2 gap."""
    import torch

    length = prompt["input_ids"].shape[1]
    out = model.generate(**prompt, max_new_tokens=tokens, do_sample=False, use_cache=True)
    whole = dict(prompt, input_ids=out, attention_mask=torch.ones_like(out))
    logits = model(**whole, use_cache=False).logits[0, length - 1 : out.shape[1] - 1].float()
    top = logits.topk(2, -1).values
    return {
        "greedy_cache_equals_no_cache": logits.argmax(-1).tolist() == out[0, length:].tolist(),
        "greedy_tokens": out.shape[1] - length,
        "min_margin": float((top[:, 0] - top[:, 1]).min()),
    }


def installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # imported as None: blocked
        return False


def part_training(scratch: Path) -> dict:
    """phi3v_recipe.train on the tiny model: 2 steps with a checkpoint, then resumed to 3 (TRL and datasets needed)."""
    missing = [name for name in ("trl", "datasets") if not installed(name)]
    if missing:
        return {"skipped": f"{' and '.join(missing)} not installed"}
    from ..synthetic import write_sample_set
    from ..tiny import write_tiny_checkpoint

    model = write_tiny_checkpoint(scratch / "tiny")
    data = write_sample_set(scratch / "data", rows=24, seed=0)
    root = Path(__file__).resolve().parents[2]
    base = [
        sys.executable, "-m", "phi3v_recipe.train", "--config", str(root / "recipes/demo.yaml"),
        "--model_name_or_path", str(model), "--dataset", str(data), "--output_dir", str(scratch / "run"),
        "--eval_strategy", "no", "--scored_evaluation", "false", "--report_to", "none", "--save_steps", "2",
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--dataloader_num_workers", "0",
    ]  # fmt: skip
    first = subprocess.run([*base, "--max_steps", "2"], capture_output=True, text=True, timeout=600)
    second = subprocess.run(
        [*base, "--max_steps", "3", "--resume_from_checkpoint", "true"], capture_output=True, text=True, timeout=600
    )
    state = scratch / "run" / "checkpoint-3" / "trainer_state.json"
    resumed = f"Resuming from {scratch / 'run' / 'checkpoint-2'}" in second.stdout
    return {
        "first_run_ok": first.returncode == 0,
        "resumed_run_ok": second.returncode == 0 and resumed,
        "steps_after_resume": json.loads(state.read_text())["global_step"] if state.is_file() else None,
        "error": None if first.returncode == second.returncode == 0 else (first.stderr + second.stderr)[-1500:],
    }


def main(argv=None) -> dict:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["full", "tiny"], default=None, help="default: full on a GPU, else tiny")
    parser.add_argument("--batches", default="1,2,4")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default="outputs/gpu-check.json")
    args = parser.parse_args(argv)
    import torch
    import transformers

    from . import table, write_results

    device, name, peak = device_and_peak()
    size = args.size or ("full" if device == "cuda" else "tiny")
    start = time.perf_counter()
    results = {
        "device": name,
        "size": size,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "dense_bf16_peak": peak,
    }
    model, config = build_model(size, device)
    results["steps"] = part_steps(model, config, [int(b) for b in args.batches.split(",")], args.steps, device, peak)
    columns = ["mode", "batch", "tokens", "samples_per_s", "peak_gib", "mfu", "plan_gib", "plan_with_margin_gib"]
    print(f"1. Training steps, {size} model on {name} (bf16 autocast, LoRA r 64, num_crops 16)")
    print(
        table(
            [{k: r.get(k) for k in columns} | ({"mfu": "oom"} if r.get("oom") else {}) for r in results["steps"]],
            columns,
        )
    )
    results["numerics"] = part_numerics(model, config, device)
    print("\n2. Numerics (bf16 SDPA against fp32 eager; greedy with the KV cache against without)")
    print(table([results["numerics"]], list(results["numerics"])))
    del model
    with tempfile.TemporaryDirectory() as scratch:
        results["training"] = part_training(Path(scratch))
    print(
        "\n3. Training with resume (tiny model, phi3v_recipe.train)\n"
        + table([results["training"]], list(results["training"]))
    )
    results["seconds"] = round(time.perf_counter() - start, 1)
    write_results(args.out, results)
    print(f"\n{results['seconds']} s in all; the table is in {args.out}")
    return results


if __name__ == "__main__":
    run(main)
