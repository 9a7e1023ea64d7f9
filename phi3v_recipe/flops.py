"""FLOPs per sample of a training step, by part, from the model's shapes and the rows' token counts (analytic), and the
GPUs a step's time is planned on. Used by ``phi3v-recipe plan`` and the benches (``bench/flops.py``)."""

# The cookbook's LoRA modes that freeze the vision model (``--freeze_vision_model``): see ``bench/baselines.py``.
FROZEN_VISION = {"official-frozen", "official-frozen-bs1", "official-frozen-bs1-nohead"}


def model_shapes(config) -> dict:
    """Parameter counts from the model's shapes (built on the meta device: no memory, no weights)."""
    import torch

    from .phi3_v import Phi3VForCausalLM

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
    checkpointed: float | None = None,
    full: bool = False,
) -> dict:
    """FLOPs per sample of one training step of ``mode`` on the full-size model, by part (see FLOPS_FORMULA).
    ``tokens`` and ``tokens_sq`` are the mean of T and T^2 per row for this mode's padding. For ours:
    ``checkpointed``, the share of decoder layers checkpointed (default: the mode's); ``full``, the language model
    trained whole (its weights' gradients too, and no LoRA) instead of a LoRA."""
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
            parts["head"] = 4 * shapes["head"] * tokens + 6 * shapes["lora_head"] * tokens * (
                not mode.endswith("nohead")
            )
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
            if full:
                parts["decoder"] = 6 * shapes["decoder_linear"] * tokens
                parts["head"] = 6 * shapes["head"] * answer
            parts["vision"] = clip_forward
            share = {"ours-no-ckpt": 0.0, "ours-ckpt-2": 0.5}.get(mode, 1.0)  # of the decoder layers checkpointed
            parts["recompute"] = (share if checkpointed is None else checkpointed) * decoder_forward
    parts["total"] = sum(parts.values())
    return parts


def decoder_flops(
    shape, tokens: float, tokens_sq: float, answer: float, crops: float, rank: int, checkpointed: float, vision_trains
) -> dict:
    """FLOPs per row of a LoRA step from ``memory.Shape`` alone, for a family without its own shapes here
    (Phi-4-multimodal): the decoder and head as FLOPS_FORMULA counts them; the vision tower as 2 FLOPs per weight per
    patch token (x3 when it trains), its attention left out. Coarser than ``mode_flops``."""
    decoder_forward = 2 * shape.decoder_linear * tokens + 2 * shape.layers * shape.hidden * tokens_sq
    vision_forward = 2 * shape.vision_params * crops * shape.vision_tokens
    parts = {
        "decoder": 4 * shape.decoder_linear * tokens + 6 * rank * shape.lora_width * tokens,
        "attention": 3 * 2 * shape.layers * shape.hidden * tokens_sq,
        "head": 4 * shape.vocab * shape.hidden * answer,
        "vision": vision_forward * (3 if vision_trains else 1),
        "recompute": checkpointed * decoder_forward,
    }
    parts["total"] = sum(parts.values())
    return parts
