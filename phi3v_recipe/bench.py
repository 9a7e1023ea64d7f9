"""Benchmarks, side by side with the naive recipe of the public Phi-3-Vision guide, printed as tables.

    python -m phi3v_recipe.bench [--out bench.json] [--steps 8] [--device cpu|cuda] [--model tiny|full]

1. Preprocessing: images/s on one core (num_crops 4 and 16) of our processor vs a straightforward per-crop
   implementation of the same algorithm, and the time to decode + process + collate a batch.
2. Padding: share of padded tokens per batch for fixed-length padding, dynamic padding, and dynamic padding with
   length-grouped batches, on the synthetic set.
3. Training step: samples/s, answer tokens/s and peak memory of the naive recipe vs ours, same model, data,
   batch size and steps, each in a fresh process. Naive = every row padded to max_length, labels = input_ids,
   LoRA on every linear layer (vision tower included), the loss from full fp32 logits, random batches, every crop
   slot through the vision tower, preprocessing in the main process. Ours = the recipe's defaults, with the loss
   as Phi3VSFTTrainer computes it: on the CPU at labelled positions only, on CUDA through TRL's fused LM head. On
   the CPU a third row runs ours with TRL's own CPU loss, which scores every position.
"""

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CROP = 336


# ---------- 1. preprocessing ----------
def naive_process(image: Image.Image, num_crops: int, mean, std) -> torch.Tensor:
    """The same HD transform written the straightforward way: PIL canvas padding, then every crop cut, converted
    and normalised on its own."""
    from .phi3_v.image_processing_phi3_v import hd_grid

    image = image.convert("RGB")
    transposed = image.width < image.height
    if transposed:  # resize with the long side horizontal, as the reference does (PIL's two passes round in order)
        image = image.transpose(Image.Transpose.TRANSPOSE)
    new_w, new_h, rows, cols = hd_grid(*image.size, num_crops)
    resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (cols * CROP, rows * CROP), (255, 255, 255))
    canvas.paste(resized, (0, (rows * CROP - new_h) // 2))
    if transposed:
        canvas = canvas.transpose(Image.Transpose.TRANSPOSE)
        rows, cols = cols, rows
    mean, std = np.array(mean, dtype=np.float32), np.array(std, dtype=np.float32)

    def to_tensor(img):
        return torch.from_numpy(((np.asarray(img, dtype=np.float32) / 255.0 - mean) / std).transpose(2, 0, 1).copy())

    crops = [
        to_tensor(canvas.crop((c * CROP, r * CROP, (c + 1) * CROP, (r + 1) * CROP)))
        for r in range(rows)
        for c in range(cols)
    ]
    glb = F.interpolate(to_tensor(canvas)[None], size=(CROP, CROP), mode="bicubic", align_corners=False)[0]
    slots = [glb, *crops] + [torch.zeros(3, CROP, CROP)] * (num_crops - rows * cols)
    return torch.stack(slots)


def bench_preprocessing(processor, folder: Path, repeats: int = 2) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per core
    rng = np.random.default_rng(0)
    sizes = [(1000, 750), (2000, 1500), (750, 1000)]
    paths = []
    for i, (w, h) in enumerate(sizes * 3):
        y, x = np.mgrid[0:h, 0:w]
        arr = np.stack([x % 256, y % 256, (x * y) % 256], -1) + rng.normal(0, 25, (h, w, 3))
        path = folder / f"photo{i}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    images = [Image.open(p).convert("RGB") for p in paths]
    image_processor = processor.image_processor
    rows = []
    for num_crops in (4, 16):
        image_processor.num_crops = num_crops

        def ours():
            for image in images:
                image_processor(image)

        def naive(crops=num_crops):
            for image in images:
                naive_process(image, crops, image_processor.image_mean, image_processor.image_std)

        for name, fn in (("ours", ours), ("per-crop", naive)):
            fn()  # warm-up
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            rows.append(
                {
                    "num_crops": num_crops,
                    "implementation": name,
                    "images_per_s_per_core": len(images) * repeats / (time.perf_counter() - start),
                }
            )
    # decode + process + collate one batch of 8 rows (num_crops 16)
    from .collator import VisionSFTCollator
    from .conversation import conversation

    batch = [
        {"images": [str(p)], "messages": conversation("What is shown in this image?", 1, "Product: X")}
        for p in paths[:8]
    ]
    collator = VisionSFTCollator(processor)
    collator(batch)
    start = time.perf_counter()
    collator(batch)
    rows.append(
        {
            "num_crops": 16,
            "implementation": "ours: decode+process+collate 8 rows",
            "seconds": time.perf_counter() - start,
        }
    )
    torch.set_num_threads(threads)
    return rows


# ---------- 2. padding ----------
def padded_share(lengths: list[int], batches: list[list[int]], pad_to: int | None = None) -> float:
    real = sum(lengths[i] for b in batches for i in b)
    total = sum((pad_to or max(lengths[i] for i in b)) * len(b) for b in batches)
    return 1 - real / total


def bench_padding(lengths: list[int], batch_size: int, max_length: int) -> list[dict]:
    from transformers.trainer_pt_utils import LengthGroupedSampler

    order = list(range(len(lengths)))
    random.Random(0).shuffle(order)
    random_batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    grouped_order = list(LengthGroupedSampler(batch_size, lengths=lengths, generator=torch.Generator().manual_seed(0)))
    grouped = [grouped_order[i : i + batch_size] for i in range(0, len(grouped_order), batch_size)]
    return [
        {
            "padding": f"fixed to max_length={max_length}",
            "padded_share": padded_share(lengths, random_batches, max_length),
        },
        {"padding": "dynamic (longest in batch)", "padded_share": padded_share(lengths, random_batches)},
        {"padding": "dynamic + length grouping", "padded_share": padded_share(lengths, grouped)},
    ]


# ---------- 3. training step ----------
class NaiveCollator:
    """The guide's batches: every row padded to max_length, labels = input_ids (prompt, image slots, padding)."""

    def __init__(self, processor, max_length):
        from .collator import VisionSFTCollator

        self.inner = VisionSFTCollator(processor, max_length, pad_to_multiple_of=max_length)

    def __call__(self, rows):
        batch = self.inner(rows)
        batch["n_answer_tokens"] = (batch["labels"] != -100).sum()
        batch["n_real_tokens"] = batch["attention_mask"].sum()
        batch["labels"] = batch["input_ids"].clamp(min=0)  # image slots and padding trained too
        batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
        return batch


def run_all_crops(embedding):
    """Send every crop slot, zero padding included, through the vision tower (as the reference does)."""
    original = embedding.forward

    def forward(pixel_values, image_sizes):
        vision = embedding.img_processor.vision_model
        vision.hidden_state(
            pixel_values.flatten(0, 1).to(vision.embeddings.patch_embedding.weight.dtype), embedding.feature_layer
        )
        return original(pixel_values, image_sizes)

    embedding.forward = forward


def train_step_run(
    mode: str,
    model_dir: str,
    rows: list[dict],
    lengths: list[int],
    steps: int,
    batch_size: int,
    max_length: int,
    num_crops: int,
    device: str,
) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoProcessor
    from transformers.trainer_pt_utils import LengthGroupedSampler
    from trl.trainer.utils import add_fused_lm_head

    from .collator import VisionSFTCollator
    from .train import LANGUAGE_MODEL_LORA_TARGETS, labelled_positions_loss

    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(model_dir, num_crops=num_crops)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa").to(device)
    embedding = model.model.vision_embed_tokens
    if mode.startswith("ours"):
        for module in embedding.unused_modules():
            module.requires_grad_(False)
        add_fused_lm_head(model)  # as SFTTrainer does
        lora = LoraConfig(r=16, lora_alpha=32, target_modules=LANGUAGE_MODEL_LORA_TARGETS, task_type="CAUSAL_LM")
        collate, sampler, workers = (
            VisionSFTCollator(processor, max_length),
            LengthGroupedSampler(batch_size, lengths=lengths, generator=torch.Generator().manual_seed(0)),
            2,
        )
    else:
        run_all_crops(embedding)
        lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        collate, sampler, workers = (
            NaiveCollator(processor, max_length),
            torch.utils.data.RandomSampler(rows, generator=torch.Generator().manual_seed(0)),
            0,
        )
    model = get_peft_model(model, lora)
    model.train()
    loader = torch.utils.data.DataLoader(
        rows, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=workers
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    warmup = 2
    times, answer_tokens, loss_tokens, seen_tokens, real_tokens, crops = [], 0, 0, 0, 0, 0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    batches = iter(loader)
    for step in range(warmup + steps):
        start = time.perf_counter()
        batch = {k: v.to(device) for k, v in next(batches).items()}
        n_answer = int(batch.pop("n_answer_tokens", (batch["labels"] != -100).sum()))
        n_real = int(batch.pop("n_real_tokens", batch["attention_mask"].sum()))
        batch["pixel_values"] = batch["pixel_values"].to(dtype)
        if mode == "ours" and device == "cpu":  # as Phi3VSFTTrainer.compute_loss on the CPU
            loss = labelled_positions_loss(model, dict(batch))[0]
        elif mode.startswith("ours"):  # TRL's fused LM head: compact on CUDA, every position elsewhere
            loss = model(**batch, fused_lm_head=True).loss
        else:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
            answer_tokens += n_answer
            loss_tokens += int((batch["labels"] != -100).sum())
            seen_tokens += batch["input_ids"].numel()
            real_tokens += n_real
            crops += sum(int(h) // CROP * (int(w) // CROP) + 1 for h, w in batch["image_sizes"])
    elapsed = sum(times)
    result = {
        "mode": mode,
        "samples_per_s": steps * batch_size / elapsed,
        "answer_tokens_per_s": answer_tokens / elapsed,
        "loss_tokens_per_s": loss_tokens / elapsed,
        "tokens_processed_per_s": seen_tokens / elapsed,
        "step_seconds_median": statistics.median(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    if device == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        flops = useful_flops(model, real_tokens, answer_tokens, crops)
        result |= {"useful_tflops_per_sample": flops / (steps * batch_size) / 1e12, "mfu": flops / elapsed / H100_BF16}
    return result


H100_BF16 = 989e12  # H100 SXM dense bf16 peak, FLOP/s


def useful_flops(model, tokens: int, answer_tokens: int, crops: int) -> float:
    """Matmul FLOPs of the useful work in a LoRA step (padding, empty crop slots and unlabelled logits excluded):
    decoder 4*N_dec per real token (forward 2N, backward through frozen weights 2N), LM head 4*N_head per answer
    token, vision tower 2*N_vis*577 per real crop (forward only, frozen; N_vis counts the layers up to the feature
    layer). Attention scores, the image projection and LoRA's own weights are left out (each under 1% here)."""
    base = model.get_base_model()
    embedding = base.model.vision_embed_tokens
    unused = {id(p) for m in embedding.unused_modules() for p in m.parameters()}
    n_vision = sum(p.numel() for p in embedding.img_processor.parameters() if id(p) not in unused)
    n_head = base.lm_head.weight.numel()
    n_decoder = sum(p.numel() for n, p in base.model.layers.named_parameters() if "lora_" not in n)
    return 4 * n_decoder * tokens + 4 * n_head * answer_tokens + 2 * n_vision * 577 * crops


def build_model_dir(kind: str, folder: Path, num_crops: int) -> Path:
    from .tiny import write_tiny_checkpoint

    if kind == "tiny":
        return write_tiny_checkpoint(folder / "tiny", num_crops=num_crops)
    # Full-size Phi-3-Vision architecture (Phi-3-mini + CLIP ViT-L/14-336) with random weights, tiny tokenizer.
    from .phi3_v import Phi3VConfig, Phi3VForCausalLM
    from .tiny import build_tokenizer, preprocessor_config_dict

    out = folder / "full"
    config = Phi3VConfig(torch_dtype="bfloat16")
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Phi3VForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor_config_dict(num_crops)))
    build_tokenizer().save_pretrained(out)
    return out


def table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    widths = [max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(fmt(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


def main(argv=None) -> dict:
    import phi3v_recipe  # noqa: F401

    parser = argparse.ArgumentParser(description="phi3v-recipe benchmarks (tables + JSON).")
    parser.add_argument("--out", default="outputs/bench.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", choices=["tiny", "full"], default=None, help="default: tiny on CPU, full on GPU")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--num_crops", type=int, default=None, help="default: 4 on CPU, 16 on GPU")
    parser.add_argument("--max_length", type=int, default=None, help="the naive recipe's fixed length")
    parser.add_argument("--train_step", default=None, help=argparse.SUPPRESS)  # internal: a spec file, one mode
    args = parser.parse_args(argv)
    if args.train_step:
        spec = json.loads(Path(args.train_step).read_text())
        print("RESULT " + json.dumps(train_step_run(**spec)))
        return {}

    from transformers import AutoProcessor

    from .data import DataArguments, prepare_data
    from .synthetic import write_sample_set

    kind = args.model or ("full" if args.device == "cuda" else "tiny")
    num_crops = args.num_crops or (16 if args.device == "cuda" else 4)
    max_length = args.max_length or (2048 if num_crops > 4 else 1024)
    work = Path(tempfile.mkdtemp(prefix="phi3v-bench-"))
    model_dir = build_model_dir(kind, work, num_crops)
    processor = AutoProcessor.from_pretrained(model_dir, num_crops=num_crops)
    csv_path = write_sample_set(work / "data", rows=args.rows, seed=0)
    data = prepare_data(DataArguments(dataset=str(csv_path), eval_fraction=0), processor, max_length)
    rows, lengths = data.train.to_list(), list(data.train["length"])
    results = {
        "device": args.device,
        "model": kind,
        "num_crops": num_crops,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "rows": len(rows),
        "cpu_threads": torch.get_num_threads(),
    }

    results["preprocessing"] = bench_preprocessing(processor, work)
    results["padding"] = bench_padding(lengths, 8, max_length)
    results["training_step"] = []
    # On the CPU also the step as TRL's own compute_loss would run it, to show what the trainer's CPU loss saves.
    modes = ["naive", "ours"] + (["ours, TRL fused head on every position"] if args.device == "cpu" else [])
    for mode in modes:
        spec = {
            "mode": mode,
            "model_dir": str(model_dir),
            "rows": rows,
            "lengths": lengths,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "max_length": max_length,
            "num_crops": num_crops,
            "device": args.device,
        }
        spec_file = work / f"{mode}.json"
        spec_file.write_text(json.dumps(spec))
        proc = subprocess.run(
            [sys.executable, "-m", "phi3v_recipe.bench", "--train_step", str(spec_file)],
            capture_output=True,
            text=True,
        )
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            raise RuntimeError(f"{mode} training-step run failed:\n{proc.stderr[-4000:]}")
        results["training_step"].append(json.loads(line[-1][7:]))
    naive, ours = results["training_step"][:2]
    results["speedup_samples_per_s"] = ours["samples_per_s"] / naive["samples_per_s"]
    results["peak_rss_ratio"] = ours["peak_rss_mb"] / naive["peak_rss_mb"]
    results["peak_rss_growth_ratio"] = ours["peak_rss_growth_mb"] / naive["peak_rss_growth_mb"]

    print(
        f"\nphi3v-recipe benchmarks: device={args.device} model={kind} num_crops={num_crops} "
        f"threads={results['cpu_threads']} rows={len(rows)}"
    )
    print(
        "\n1. Preprocessing (one core)\n"
        + table(results["preprocessing"], ["num_crops", "implementation", "images_per_s_per_core", "seconds"])
    )
    print(
        f"\n2. Padding (batch 8, {len(lengths)} rows, lengths {min(lengths)}-{max(lengths)})\n"
        + table(results["padding"], ["padding", "padded_share"])
    )
    cols = [
        "mode",
        "samples_per_s",
        "answer_tokens_per_s",
        "loss_tokens_per_s",
        "tokens_processed_per_s",
        "step_seconds_median",
        "peak_rss_mb",
        "peak_rss_growth_mb",
        "trainable_params",
    ]
    if args.device == "cuda":
        cols += ["peak_gpu_mb", "useful_tflops_per_sample", "mfu"]
    print(
        f"\n3. Training step (batch {args.batch_size}, {args.steps} timed steps after 2 warm-up)\n"
        + table(results["training_step"], cols)
    )
    print(
        f"\nours vs naive: {results['speedup_samples_per_s']:.2f}x samples/s, peak RSS {results['peak_rss_ratio']:.2f}x "
        f"(growth during training {results['peak_rss_growth_ratio']:.2f}x)"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"Wrote {out}")
    return results


if __name__ == "__main__":
    main()
