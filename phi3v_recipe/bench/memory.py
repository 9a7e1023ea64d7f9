"""GPU memory of a LoRA training step of the full-size model, estimated per batch size and activation checkpointing
policy (off, every n-th decoder layer, all), for a recipe's token counts.

    python -m phi3v_recipe.bench.memory [--tokens 2181] [--answer 20] [--crops 17]

What a step holds at its peak: the bf16 weights; the LoRA weights in fp32 with their gradients and AdamW's two
moments; the activations the backward pass needs; the frozen CLIP forward (transient); the fp32 logits of the answer
positions. The activations are measured, not guessed: one decoder layer of the full-size shape runs forward on the
CPU with its LoRA (r 64 on qkv/o/gate_up/down), every tensor autograd saves is counted once (by storage), at two
sequence lengths; the bytes per token come from the linear term. SDPA's math kernel on the CPU keeps the T x T
attention probabilities, which the GPU's flash and memory-efficient kernels do not: that quadratic term is fitted
apart and left out. A layer checkpointed saves its input only (2 d bytes per token), and the backward pass rebuilds
one layer's activations at a time. Not counted: the CUDA context and the allocator's fragmentation (typically
0.5-2 GB; only a GPU run shows them), and the DataLoader's pinned batches.
"""

import argparse

GIB = 2**30


def saved_bytes_per_token(lora_dropout: float = 0.0, lengths=(128, 256, 512)) -> tuple[float, float]:
    """(bytes per token, bytes per token^2) that autograd saves for one full-size decoder layer with LoRA, bf16."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers.models.phi3.modeling_phi3 import Phi3DecoderLayer, Phi3RotaryEmbedding

    from ..phi3_v import Phi3VConfig

    config = Phi3VConfig()
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)

    class OneLayer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = Phi3DecoderLayer(config, 0)
            self.rotary = Phi3RotaryEmbedding(config)

        def forward(self, hidden):
            positions = torch.arange(hidden.shape[1])[None]
            return self.layer(hidden, position_embeddings=self.rotary(hidden, positions), position_ids=positions)

    model = OneLayer().to(torch.bfloat16)
    lora = LoraConfig(
        r=64,
        lora_alpha=128,
        lora_dropout=lora_dropout,
        target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    )
    model = get_peft_model(model, lora).train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}  # saved weights are no activations
    counted = []
    for length in lengths:
        storages = {}

        def pack(tensor, storages=storages):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights:
                storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        hidden = torch.randn(1, length, config.hidden_size, dtype=torch.bfloat16, requires_grad=True)
        # bf16 autocast, as the Trainer runs a step with bf16: true (PEFT keeps the adapter weights in fp32)
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            output = model(hidden)
        output = output[0] if isinstance(output, tuple) else output
        counted.append(sum(storages.values()))
        del output
    # bytes = c + a t + b t^2: c is what does not grow with the tokens (autocast's bf16 copies of the fp32 adapters)
    import numpy

    design = numpy.array([[1.0, t, t * t] for t in lengths])
    _, per_token, quadratic = numpy.linalg.solve(design, numpy.array(counted, dtype=float))
    return float(per_token), float(quadratic)


def full_size_counts() -> dict:
    """The full-size model's parameter counts (``flops.model_shapes``: built on the meta device)."""
    from ..phi3_v import Phi3VConfig
    from .flops import model_shapes

    return model_shapes(Phi3VConfig())


def estimate(
    counts: dict, per_token: float, batch: int, tokens: float, answer: float, crops: float, every: int | None
):
    """GiB at the peak of a step; ``every``: None (no checkpointing) or n (every n-th decoder layer checkpointed)."""
    layers, d = counts["layers"], counts["hidden"]
    checkpointed = 0 if every is None else -(-layers // every)
    positions = batch * tokens
    activations = positions * ((layers - checkpointed) * per_token + checkpointed * 2 * d)
    if checkpointed:
        activations += positions * per_token  # one checkpointed layer rebuilt during the backward pass
    parts = {
        "weights": counts["params"] * 2,
        "lora_and_adamw": counts["lora_decoder"] * 16,  # fp32 weight, gradient, two moments
        "activations": activations,
        "vision": batch * crops * 577 * 4096 * 2 * 2,  # CLIP's widest activation, in and out, frozen: transient
        "logits": batch * answer * counts["head"] // d * (2 + 4 + 4),  # bf16 logits, fp32 copy and its gradient
    }
    return {k: v / GIB for k, v in parts.items()} | {"total": sum(parts.values()) / GIB}


POLICIES = {"off": None, "every 4th": 4, "every 2nd": 2, "all": 1}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tokens", type=float, default=2181, help="tokens per row after padding (bench: ours, 16 crops)"
    )
    parser.add_argument("--answer", type=float, default=20, help="answer tokens per row")
    parser.add_argument("--crops", type=float, default=17, help="CLIP crops per row (16 sub-crops at most + global)")
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--out", default="outputs/bench-memory.json")
    args = parser.parse_args(argv)
    counts = full_size_counts()
    per_token, quadratic = saved_bytes_per_token(0.0)
    with_dropout, _ = saved_bytes_per_token(0.05)
    print(
        f"One full-size decoder layer with LoRA r 64 saves {per_token / 1024:.1f} KiB per token for the backward pass "
        f"(lora_dropout 0; {with_dropout / 1024:.1f} KiB with 0.05). Fitted T^2 term (attention probabilities): "
        f"{quadratic:.1f} bytes per token^2, left out (flash / memory-efficient attention on a GPU keeps none)."
    )
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        for policy, every in POLICIES.items():
            parts = estimate(counts, per_token, batch, args.tokens, args.answer, args.crops, every)
            rows.append({"batch_size": batch, "checkpointing": policy} | {k: round(v, 1) for k, v in parts.items()})
    from . import table, write_results

    print(
        f"\nEstimated GPU memory (GiB) of a LoRA step of the full-size model at {args.tokens:.0f} tokens per row, bf16, "
        "without the CUDA context and allocator overhead\n"
        + table(
            rows,
            ["batch_size", "checkpointing", "weights", "lora_and_adamw", "activations", "vision", "logits", "total"],
        )
    )
    results = {"per_token_bytes": per_token, "per_token_bytes_dropout_0.05": with_dropout, "quadratic": quadratic}
    results |= {"counts": counts, "tokens": args.tokens, "rows": rows}
    write_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
