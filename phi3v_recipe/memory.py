"""GPU memory of one training step, per GPU and by part: the estimate ``phi3v-recipe plan`` prints and the recipes'
hardware lines cite.

The formula is counted, not fitted: each term is what a step holds, from the model's shapes and the batch's token
counts. It was checked against full-size Phi-3-Vision steps counted exactly on the CPU (``bench/step_memory.py``:
autograd's saved tensors, the optimiser's state, the allocator's peak over two steps); ``MEASURED`` keeps those
numbers and ``tests/test_memory.py`` holds the formula to them.

Per row of T tokens (padding included), A answer tokens, in a decoder of width d, MLP width I, h heads (k key/value
heads of width e), LoRA rank r on the four projections (lora_dropout 0), bf16:

- a decoder layer that is not checkpointed saves 26d + 8I + 8r + 4h + 8 bytes per token (with k < h key/value
  heads, 6(k e - d) more): the two RMSNorms' fp32 inputs, the inputs of the three LoRA'd d-wide projections and of
  down_proj, the LoRA A outputs, the qkv output, the rotated q and k, the attention output and its log-sum-exp,
  the gate_up output and the activation; with lora_dropout > 0, 4 bytes more per adapted input feature; and the
  bf16 copies of its LoRA weights that autocast makes; the rotary cos and sin (4e per token) once for all layers.
  Without checkpointing the first layer's input needs no gradient: its norm saves nothing;
- a checkpointed layer saves its input (2d per token) and the backward pass rebuilds one layer at a time;
- the model saves the final norm's fp32 input (4d + 5 per token) and the labelled positions;
- the loss holds the answer positions' logits: bf16, their fp32 copy, log-softmax and its gradient (14 V per token);
- the frozen vision tower runs without autograd (no saved activations): its transient peak is one layer's widest
  tensors over all crops; a vision tower that trains (Phi-4-multimodal's) keeps each layer's input when
  checkpointed, else about 24 d_v + 6 I_v bytes per patch per layer (a ViT layer counted as a decoder layer is;
  checked only in a step of 2 crops, where it is small: ``MEASURED_PHI4MM_2_LAYERS``);
- the trained parameters: fp32 weight, gradient and AdamW's two moments (16 bytes each; bf16 for QLoRA's adapter,
  which TRL casts to bf16: 8 bytes; a module trained whole, Phi-4-multimodal's image embedding less its parts that
  never reach the loss, in fp32 like an adapter: ``train.train_saved_modules_in_fp32``); full fine-tuning under
  FSDP (the vision tower frozen): the trained weights in fp32, their gradients and moments, and the frozen tower in
  bf16, all sharded over the GPUs, plus one decoder layer gathered in bf16 (checked on a 2-layer cut over two
  processes: ``MEASURED_FSDP_2_LAYERS``; the gathered embeddings and head, 0.4 GiB, did not add to its peak);
- QLoRA's 4-bit decoder weights: 0.5 bytes a weight plus the double-quantised block scales;
- after SFT (``stage: grpo``): generation first holds the KV cache of the generation batch (keys and values of every
  layer, 4 k e bytes per token and layer in bf16) and, while the prompts are read, one layer's MLP transients over
  them (6 I bytes per token); it is freed before the training passes: the peak takes the larger of it and the step's
  activations and logits (the cache's size checked against transformers' cache; a GRPO step of a scaled-down model
  against the formula in docs/after-sft.md). ``stage: dpo`` is a step over chosen and rejected rows (twice the
  batch), whose reference pass (adapter off, no gradient) runs while the step's activations are held: its vision
  transient is counted again (checked against a DPO step of a scaled-down model in docs/after-sft.md); GRPO's
  reference pass runs before the training passes.

Not in the measurement (a GPU's share, added as ``margin``): the CUDA context (about 0.5 GiB with torch 2.x on
Hopper, by NVIDIA's and PyTorch's figures; our GPU runs have not measured it) and the caching allocator's
fragmentation, taken as 10% of the rest.
"""

import dataclasses

GIB = 2**30
CUDA_CONTEXT = 0.5 * GIB
FRAGMENTATION = 0.10
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit weight + 8-bit block scale per 64 + fp32 scale per 256 blocks


@dataclasses.dataclass(frozen=True)
class Shape:
    """What the estimate reads of a model: counts from its config, built on the meta device."""

    params: int
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    decoder_linear: int  # the decoder's linear weights (4-bit under QLoRA)
    lora_width: int  # sum of in + out features over the LoRA'd decoder matrices: LoRA parameters = r x this
    vision_params: int
    vision_hidden: int
    vision_intermediate: int
    vision_tokens: int  # per crop
    vision_layers: int
    vision_unused: int = 0  # the vision parameters that never reach the loss (frozen even where the tower trains)
    vision_tower: int = 0  # the vision encoder's parameters (CLIP, SigLIP): what freeze_vision_tower freezes


def layer_bytes_per_token(s: Shape, rank: int, dropout: float = 0.0) -> int:
    """Bytes a non-checkpointed decoder layer with LoRA on qkv/o/gate_up/down saves per token (see the module)."""
    d, inner, e = s.hidden, s.intermediate, s.head_dim
    kv = s.kv_heads * e
    norms = 2 * (4 * d + 4)
    lora_inputs = 3 * 2 * d + 2 * inner + 4 * 2 * rank
    attention = 2 * (d + 2 * kv) + 2 * d + 2 * kv + 2 * d + 4 * s.heads  # the rotary cos/sin: once per model
    mlp = 4 * inner + 2 * inner
    drop = 4 * (3 * d + inner) if dropout > 0 else 0
    return norms + lora_inputs + attention + mlp + drop


def gathered_layer(s: Shape) -> float:
    """Bytes of one decoder layer gathered in bf16 under FSDP: its matrices and its two norms."""
    return 2 * (s.decoder_linear / s.layers + 2 * s.hidden)


def checkpointed_layers(layers: int, every: int | None) -> int:
    """How many decoder layers transformers checkpoints with ``every_n_layers`` (None: checkpointing off)."""
    return 0 if every is None else len(range(0, layers, every))


def step_memory(
    s: Shape,
    *,
    batch: int,
    tokens: float,
    answer: float,
    crops: float,
    every: int | None,
    rank: int,
    trained_whole: int = 0,
    quantized: bool = False,
    full: bool = False,
    gpus: int = 1,
    dropout: float = 0.0,
    generation: float = 0.0,
    reference: bool = False,
    tower_frozen: bool = True,
) -> dict[str, float]:
    """Bytes per GPU at the peak of a training step, by part (see the module). ``tokens``: per row, padded;
    ``answer``: labelled tokens per row; ``every``: checkpoint every n-th decoder layer (None: off);
    ``trained_whole``: parameters trained beside the LoRA (a family's saved modules); ``full``: full fine-tuning of
    the language model, sharded over ``gpus`` (FSDP); ``generation``: bytes held while generating, before the
    step's activations (GRPO's KV cache, ``kv_cache``); ``reference``: a reference pass runs while the step's
    activations are held (DPO's), its vision tower's transient beside them; ``tower_frozen``: under full
    fine-tuning, the vision tower does not train (``freeze_vision_tower``)."""
    d = s.hidden
    per_token = layer_bytes_per_token(s, rank, dropout)
    kept = checkpointed_layers(s.layers, every)
    positions = batch * tokens
    whole = s.layers - kept
    saved = positions * (whole * per_token + kept * 2 * d + 4 * d + 5)
    if whole:  # the rotary cos and sin, saved once; the LoRA weights' bf16 copies autocast makes, per layer
        saved += positions * 4 * s.head_dim + whole * 2 * rank * s.lora_width // s.layers
    if not kept:  # without checkpointing nothing makes the embeddings require grad: the first norm saves nothing
        saved -= positions * (4 * d + 4)
    rebuilt = positions * per_token if kept else 0  # the backward pass rebuilds one checkpointed layer
    lora = 0 if full else rank * s.lora_width
    if full:  # FSDP: trained weights in fp32 shards, frozen ones in bf16 shards, one decoder layer gathered in bf16
        trainable = s.params - (s.vision_tower if tower_frozen else s.vision_unused)
        weights = (4 * trainable + 2 * (s.params - trainable)) / gpus + gathered_layer(s)
        state = 12 * trainable / gpus  # fp32 gradient and two moments, sharded
    else:
        weights = 2 * s.params
        if quantized:
            weights -= (2 - NF4_BYTES) * s.decoder_linear
        state = (8 if quantized else 16) * lora + 16 * trained_whole
    patches = crops * batch * s.vision_tokens
    if trained_whole:  # the vision tower trains (Phi-4-multimodal): its layers keep activations too (not checked)
        per_patch = 24 * s.vision_hidden + 6 * s.vision_intermediate  # a ViT layer counted as the decoder's
        vision = patches * (s.vision_layers * 2 * s.vision_hidden + per_patch if kept else s.vision_layers * per_patch)
    else:  # frozen: no autograd, one layer's widest tensors live at a time
        vision = patches * (s.vision_hidden * 2 * 3 + s.vision_intermediate * 2)
    if reference:  # the reference pass reads the images again while the policy's activations are held
        vision *= 2
    parts = {
        "weights": weights,
        "trainable_state": state,
        "activations": saved + rebuilt,
        "logits": batch * answer * s.vocab * 14,
        "vision": vision,
    }
    if generation:
        parts["generation"] = generation
    counted = sum(parts.values()) - min(generation, parts["activations"] + parts["logits"])  # one, then the other
    parts["margin"] = CUDA_CONTEXT + FRAGMENTATION * counted
    parts["total"] = counted + parts["margin"]
    return parts


def kv_cache(s: Shape, rows: int, tokens: float, dtype_bytes: int = 2) -> float:
    """Bytes of the KV cache of ``rows`` sequences of ``tokens``: a key and a value per layer and key/value head."""
    return rows * tokens * s.layers * 2 * s.kv_heads * s.head_dim * dtype_bytes


def generation_memory(s: Shape, rows: int, tokens: float) -> float:
    """Bytes generating ``rows`` answers to ``tokens`` long sequences holds at its peak, beyond the weights: the KV
    cache, and one layer's MLP transients (gate_up's output and the activation) while the prompts are read."""
    return kv_cache(s, rows, tokens) + rows * tokens * 6 * s.intermediate if rows else 0.0


def shape_of(config, rank_targets=None) -> Shape:
    """The counts of ``config``'s model (Phi-3-Vision or Phi-4-multimodal), built on the meta device: no weights,
    about a second. ``rank_targets``: the LoRA'd matrices' names (default: the four decoder projections)."""
    import torch
    from transformers import AutoModelForCausalLM

    from . import register

    register()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    targets = rank_targets or ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
    decoder = model.model.layers
    linear = [m for m in decoder.modules() if isinstance(m, torch.nn.Linear)]
    lora_width = sum(
        m.in_features + m.out_features
        for name, m in decoder.named_modules()
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets
    )
    text = config.get_text_config()
    vision_config = getattr(config, "vision_config", None)
    from .families import family_of_model

    if model.config.model_type == "phi3_v":
        vision = model.model.vision_embed_tokens
        vision_tokens = (vision_config.image_size // vision_config.patch_size) ** 2 + 1
    else:
        vision = model.model.embed_tokens_extend.image_embed
        vision_tokens = (vision_config.image_size // vision_config.patch_size) ** 2
    inside = {id(p) for p in vision.parameters()}
    unused = {id(p): p.numel() for m in family_of_model(model).unused_modules(model) for p in m.parameters()}
    heads = text.num_attention_heads
    return Shape(
        params=sum(p.numel() for p in model.parameters()),
        vocab=text.vocab_size,
        hidden=text.hidden_size,
        intermediate=text.intermediate_size,
        layers=text.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        decoder_linear=sum(m.weight.numel() for m in linear),
        lora_width=lora_width,
        vision_params=sum(p.numel() for p in vision.parameters()),
        vision_hidden=vision_config.hidden_size,
        vision_intermediate=vision_config.intermediate_size,
        vision_tokens=vision_tokens,
        vision_layers=vision_config.num_hidden_layers,
        vision_unused=sum(n for key, n in unused.items() if key in inside),
        vision_tower=sum(p.numel() for p in family_of_model(model).vision_tower(model).parameters()),
    )


# Full-size Phi-3-Vision steps of recipes/burberry_lora.yaml (num_crops 16, LoRA r 64, bf16 autocast, its twin's
# rows: one 2,556-token row, twice for batch 2) counted on the CPU by ``python -m phi3v_recipe.bench.step_memory``
# (``make bench-fullsize``) on 2026-12-07, with the code of the commit that added this table; bytes. Batch 2 with
# every 2nd layer checkpointed, or none, needs more than this 24 GiB machine holds: not measured.
MEASURED: dict = {
    "shape": {
        "params": 4146621440, "vocab": 32064, "hidden": 3072, "intermediate": 8192, "layers": 32, "heads": 32,
        "kv_heads": 32, "head_dim": 96, "decoder_linear": 3623878656, "lora_width": 1572864,
        "vision_params": 325541888, "vision_hidden": 1024, "vision_intermediate": 4096, "vision_tokens": 577,
        "vision_layers": 24, "vision_unused": 12598272, "vision_tower": 303507456,
    },
    "steps": [
        {"rows": 1, "tokens": 2556, "answer": 29.0, "crops": 17.0, "every": 1, "weights": 8293247880,
         "trainable": 1610612736, "saved": 533951188, "saved_attention_probs": 0, "peak": 10629444744},
        {"rows": 2, "tokens": 2556, "answer": 28.5, "crops": 17.0, "every": 1, "weights": 8293247880,
         "trainable": 1610612736, "saved": 1067902368, "saved_attention_probs": 0, "peak": 11787446372},
        {"rows": 1, "tokens": 2556, "answer": 29.0, "crops": 17.0, "every": 2, "weights": 8293247880,
         "trainable": 1610612736, "saved": 6357437140, "saved_attention_probs": 0, "peak": 16237586070},
        {"rows": 1, "tokens": 2556, "answer": 29.0, "crops": 17.0, "every": None, "weights": 8293247880,
         "trainable": 1610612736, "saved": 12148127464, "saved_attention_probs": 0, "peak": 21927927974},
    ],
}  # fmt: skip


# recipes/burberry_full_fsdp.yaml's step (full fine-tuning, the CLIP tower frozen, every layer checkpointed) under
# FSDP2 over two processes (accelerate_configs/fsdp.yaml, bf16 mixed precision: fp32 master weights), on Phi-3-Vision
# at full width cut to 2 decoder layers, its twin's 2,556-token row (twice for batch 2), counted per process by
# ``python -m phi3v_recipe.bench.fullsize --points fsdp`` on 2026-12-07 with the code of the commit that added this
# record; bytes, the process with the higher step peak. held: its weight shards and trainable state (fp32 shards,
# gradients and AdamW's moments); step_peak: from the first step's start on.
MEASURED_FSDP_2_LAYERS: dict = {
    "layers": 2,
    "gpus": 2,
    "steps": [
        {"rows": 1, "tokens": 2556, "answer": 29.0, "crops": 17.0, "trainable_params": 445543424,
         "held": 3867926408, "saved": 371163828, "step_peak": 4546348596},
        {"rows": 2, "tokens": 2556, "answer": 28.5, "crops": 17.0, "trainable_params": 445543424,
         "held": 3867926408, "saved": 489827680, "step_peak": 5143740032},
    ],
}  # fmt: skip


# Phi-4-multimodal at full width cut to 2 decoder layers (``phi3v-recipe tiny DIR --family phi4mm --size full
# --layers 2``: the real SigLIP tower, which trains, the real embeddings and head), recipes/phi4mm_burberry_lora.yaml's
# step at batch 1 (its twin's 574-token row, 2 crops, the vision LoRA of rank 256 and the image embedding trained in
# fp32), counted the same way on 2026-12-07 with the code of the commit that added this record; bytes.
MEASURED_PHI4MM_2_LAYERS: dict = {
    "layers": 2,
    "step": {"rows": 1, "tokens": 574, "answer": 19.0, "crops": 2.0, "every": 1, "weights": 4792664768,
             "trainable": 6942022144, "saved": 304197792, "saved_attention_probs": 2408448, "peak": 11850154392},
}  # fmt: skip


# The stages side by side on Phi-3-Vision at full width cut to 4 decoder layers, batch 2 (DPO: 2 pairs, 4 rows),
# num_crops 4, LoRA r 64, every layer checkpointed, the same two twin photos (docs/after-sft.md), counted the same way
# on 2026-12-07; bytes. GRPO's tokens are the prompt's 776 and max_completion_length (64), DPO's the prompt's and the
# longer answer's.
MEASURED_STAGES_4_LAYERS: dict = {
    "layers": 4,
    "steps": [
        {"stage": "sft", "rows": 2, "tokens": 804, "answer": 28.5, "crops": 5.0, "peak": 2569591480},
        {"stage": "grpo", "rows": 2, "tokens": 840, "answer": 64, "crops": 5.0, "generated": 2, "peak": 2733144918},
        {"stage": "dpo", "rows": 4, "tokens": 805, "answer": 29, "crops": 5.0, "peak": 3178632312},
    ],
}  # fmt: skip
