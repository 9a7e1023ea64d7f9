"""The benches' FLOPs tables: each mode's FLOPs per sample for these rows (the formula: ``phi3v_recipe/flops.py``)."""

from ..flops import FLOPS_FORMULA, mode_flops, model_shapes  # noqa: F401 (the benches and their tests read them here)
from ..plan import grouped
from .baselines import GUIDE_LENGTH, PER_DEVICE_ONE
from .micro import random_batches


def analytic_table(shapes: dict, stats: list[dict], batch_size: int, gpu: bool = True) -> list[dict]:
    """Each mode's FLOPs per sample (by part, and ``model``: on the real tokens without recomputation, for MFU),
    for these rows' token counts and each mode's batching: random batches padded to the longest (official, trl),
    length-grouped (ours), 512 text tokens (the guide)."""
    lengths = [s["tokens"] for s in stats]
    n = len(stats)

    def padded(batches):
        per_row = [(max(lengths[i] for i in b), len(b)) for b in batches]
        return sum(t * k for t, k in per_row) / n, sum(t * t * k for t, k in per_row) / n

    mean = {k: sum(s[k] for s in stats) / n for k in ("answer", "crops", "image_tokens")}
    real_tokens = (sum(lengths) / n, sum(t * t for t in lengths) / n)
    layouts = {
        "official": padded(random_batches(n, batch_size)),
        "official-frozen": padded(random_batches(n, batch_size)),
        "guide": (GUIDE_LENGTH, GUIDE_LENGTH**2),
        "trl": padded(random_batches(n, batch_size)),
        "ours": padded(grouped(lengths, batch_size)),
    }
    layouts["ours-no-ckpt"] = layouts["ours-ckpt-2"] = layouts["ours"]
    layouts |= dict.fromkeys(PER_DEVICE_ONE, real_tokens)  # per-device batch 1: no padding
    rows = {}
    for mode, (tokens, tokens_sq) in layouts.items():
        image = (0, 0) if mode == "guide" else (mean["crops"], mean["image_tokens"])
        parts = mode_flops(shapes, mode, tokens, tokens_sq, mean["answer"], *image, gpu=gpu)
        real = mode_flops(
            shapes, mode, *(layouts[mode] if mode == "guide" else real_tokens), mean["answer"], *image, gpu=gpu
        )
        rows[mode] = {"mode": mode, "tokens_per_row": tokens} | parts | {"model": real["total"] - real["recompute"]}
    for row in rows.values():
        row["vs_ours"] = row["total"] / rows["ours"]["total"]
    return list(rows.values())


def head_share(shapes: dict) -> float:
    """The LM head's share of the weights each token's forward multiplies by (decoder + head)."""
    return shapes["head"] / (shapes["head"] + shapes["decoder_linear"])


def token_stats(rows: list[dict], lengths: list[int], processor, num_crops: int = 16) -> list[dict]:
    """Per row at ``num_crops``: tokens (text + image), answer tokens, CLIP crops (real sub-crops + the global
    view) and image tokens, from the prepared lengths and the image sizes (no pixel work)."""
    from PIL import Image

    from ..conversation import text_of
    from ..phi3_v.image_processing_phi3_v import hd_grid, num_image_tokens

    base_crops = processor.image_processor.num_crops
    stats = []
    for row, length in zip(rows, lengths):
        sizes = []
        for path in row["images"]:
            with Image.open(path) as image:
                sizes.append(image.size)
        now = sum(num_image_tokens(w, h, base_crops) for w, h in sizes)
        image_tokens = sum(num_image_tokens(w, h, num_crops) for w, h in sizes)
        grids = [hd_grid(w, h, num_crops) for w, h in sizes]
        answer = text_of(row["messages"][-1]) + "<|end|>\n<|endoftext|>"
        stats.append(
            {
                "tokens": length - now + image_tokens,
                "answer": len(processor.tokenizer(answer, add_special_tokens=False).input_ids),
                "crops": sum(r * c + 1 for *_, r, c in grids),
                "image_tokens": image_tokens,
            }
        )
    return stats
