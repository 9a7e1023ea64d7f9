"""FLOPs per sample of a training step, by part, from the model's shapes and the data's token counts (analytic)."""

from .baselines import FROZEN_VISION, GUIDE_LENGTH, PER_DEVICE_ONE
from .micro import grouped_batches, random_batches


def model_shapes(config) -> dict:
    """Parameter counts from the model's shapes (built on the meta device: no memory, no weights)."""
    import torch

    from ..phi3_v import Phi3VForCausalLM

    with torch.device("meta"):
        model = Phi3VForCausalLM(config)
    embedding = model.model.vision_embed_tokens
    unused = {id(p) for module in embedding.unused_modules() for p in module.parameters()}
    vision = embedding.img_processor.vision_model
    clip_linear = sum(
        m.weight.numel()
        for m in vision.encoder.modules()
        if isinstance(m, torch.nn.Linear) and id(m.weight) not in unused
    )
    patch = vision.embeddings.patch_embedding.weight.numel()  # a matmul per patch
    vc = config.vision_config
    shapes = {
        "params": sum(p.numel() for p in model.parameters()),
        "hidden": config.hidden_size,
        "layers": config.num_hidden_layers,
        "decoder_linear": sum(
            m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)
        ),
        "head": model.lm_head.weight.numel(),
        "clip_linear": clip_linear,
        "patch": patch,
        "clip_layers": vision.layers_needed(embedding.feature_layer),
        "clip_hidden": vc.hidden_size,
        "clip_tokens": (vc.image_size // vc.patch_size) ** 2 + 1,
        "projection": sum(m.weight.numel() for m in embedding.img_projection if isinstance(m, torch.nn.Linear)),
        # LoRA weights (r x (in + out) per adapted matrix) for r = 64
        "lora_decoder": sum(
            64 * (m.in_features + m.out_features)
            for name, m in model.model.layers.named_modules()
            if isinstance(m, torch.nn.Linear)
            and name.rsplit(".", 1)[-1] in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
        ),
        "lora_head": 64 * (model.lm_head.in_features + model.lm_head.out_features),
        "lora_clip": sum(
            64 * (m.in_features + m.out_features)
            for m in vision.encoder.modules()
            if isinstance(m, torch.nn.Linear) and id(m.weight) not in unused
        ),
        "lora_projection": sum(
            64 * (m.in_features + m.out_features) for m in embedding.img_projection if isinstance(m, torch.nn.Linear)
        ),
    }
    return shapes


FLOPS_FORMULA = """FLOPs per sample, per part (T: the tokens a row is computed on, padding included; A: answer tokens;
P: positions through the head; C: CLIP crops; S: CLIP tokens per crop; I: image tokens; d, L: width and layers).
A frozen weight costs 2 (forward) + 2 (the activation gradient, where gradients flow through it); a trained weight
2 more (its own gradient); a LoRA weight 6:
  decoder    (2 forward + 2 activation-gradient [+ 2 weight-gradient when trained]) x decoder weights x T
             + 6 x LoRA weights x T
  attention  causal scores and values: 2 L d T^2 forward, twice that backward
  head       (2 + 2 [+ 2 when trained]) x V d x P   (+ 6 x LoRA weights x P for the official LoRA on lm_head)
  vision     forward: CLIP 2 x weights x S x C + 4 L_v d_v S^2 x C (patch embedding included), projection 2 x weights
             x I. Where the official LoRA trains CLIP and the projection, gradients flow through them: their linear
             layers x2 (frozen weights: no weight gradient), attention x3, + 6 x LoRA weights per token; the patch
             embedding, below every adapted layer, runs forward only. Frozen (ours, --freeze_vision_model): forward only.
  recompute  activation checkpointing runs the checkpointed layers' forward again (decoder, and CLIP when trained)"""


def mode_flops(
    shapes: dict,
    mode: str,
    tokens: float,
    tokens_sq: float,
    answer: float,
    crops: float,
    image_tokens: float,
    gpu: bool = True,
) -> dict:
    """FLOPs per sample of one training step of ``mode`` on the full-size model, by part (see FLOPS_FORMULA).
    ``tokens`` and ``tokens_sq`` are the mean of T and T^2 per row for this mode's padding."""
    d, layers = shapes["hidden"], shapes["layers"]
    attention_forward = 2 * layers * d * tokens_sq
    clip_tokens = shapes["clip_tokens"]
    clip_linear = crops * 2 * shapes["clip_linear"] * clip_tokens
    projection = 2 * shapes["projection"] * image_tokens
    clip_attention = crops * 4 * shapes["clip_layers"] * shapes["clip_hidden"] * clip_tokens**2
    patch = crops * 2 * shapes["patch"] * clip_tokens
    clip_forward = clip_linear + clip_attention + patch + projection
    decoder_forward = 2 * shapes["decoder_linear"] * tokens + attention_forward
    parts = {}
    if mode == "guide":  # full fine-tuning, text only, every position through the trained head
        parts["decoder"] = 6 * shapes["decoder_linear"] * tokens
        parts["attention"] = 3 * attention_forward
        parts["head"] = 6 * shapes["head"] * tokens
        parts["vision"] = 0.0
        parts["recompute"] = 0.0
    else:
        parts["decoder"] = 4 * shapes["decoder_linear"] * tokens + 6 * shapes["lora_decoder"] * tokens
        parts["attention"] = 3 * attention_forward
        if mode.startswith("official"):  # full logits at every position; LoRA on the head
            parts["head"] = 4 * shapes["head"] * tokens + 6 * shapes["lora_head"] * tokens
            if (
                mode in FROZEN_VISION
            ):  # --freeze_vision_model: no LoRA in CLIP or the projection, no gradient through them
                parts["vision"] = clip_forward
                parts["recompute"] = decoder_forward
            else:
                lora = 6 * (shapes["lora_clip"] * clip_tokens * crops + shapes["lora_projection"] * image_tokens)
                parts["vision"] = 2 * (clip_linear + projection) + 3 * clip_attention + patch + lora
                parts["recompute"] = decoder_forward + clip_linear + clip_attention
        else:  # ours, and trl on a GPU (its fused head), project answer positions only; CLIP frozen
            parts["head"] = 4 * shapes["head"] * (tokens if mode == "trl" and not gpu else answer)
            parts["vision"] = clip_forward
            share = {"ours-no-ckpt": 0.0, "ours-ckpt-2": 0.5}.get(mode, 1.0)  # of the decoder layers checkpointed
            parts["recompute"] = share * decoder_forward
    parts["total"] = sum(parts.values())
    return parts


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
        "ours": padded(grouped_batches(lengths, batch_size)),
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
