"""GPU memory of a LoRA training step of the full-size Phi-3-Vision per batch size and activation checkpointing
policy, by part, from ``phi3v_recipe.memory``'s estimate (checked against full-size steps counted on the CPU:
``make bench-fullsize``). For one recipe on your own rows and GPU: ``phi3v-recipe plan``.

    python -m phi3v_recipe.bench.memory [--tokens 2600] [--answer 20] [--crops 17] [--batches 1,2,4,8]

The first line checks the formula on this machine: one full-size decoder layer with the recipes' LoRA (r 64 on
qkv/o/gate_up/down, lora_dropout 0) runs forward under bf16 autocast and every tensor autograd saves is counted once
(by storage), beside ``memory.layer_bytes_per_token``.
"""

import argparse

from ..memory import GIB, layer_bytes_per_token, shape_of, step_memory

POLICIES = {"off": None, "every 4th": 4, "every 2nd": 2, "all": 1}


def counted_layer_bytes_per_token(tokens: int = 256) -> float:
    """Bytes one full-size decoder layer with LoRA saves per token, counted (the rotary cos and sin left out: the
    model saves them once for all layers)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers.models.phi3.modeling_phi3 import Phi3DecoderLayer, Phi3RotaryEmbedding

    from ..phi3_v import Phi3VConfig

    config = Phi3VConfig()
    config._attn_implementation = "sdpa"

    class OneLayer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = Phi3DecoderLayer(config, 0)
            self.rotary = Phi3RotaryEmbedding(config)

        def forward(self, hidden, cos_sin):
            positions = torch.arange(hidden.shape[1])[None]
            return self.layer(hidden, position_embeddings=cos_sin, position_ids=positions)

    model = OneLayer().to(torch.bfloat16)
    lora = LoraConfig(r=64, lora_alpha=128, target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"])
    model = get_peft_model(model, lora).train()
    hidden = torch.randn(1, tokens, config.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    cos_sin = model.base_model.model.rotary(hidden, torch.arange(tokens)[None])
    skip = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *cos_sin]}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip and tokens in tensor.shape:  # per token: not the LoRA weights' copies
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(hidden, cos_sin)
    return sum(storages.values()) / tokens


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=float, default=2600, help="tokens per row after padding (16 crops: ~2,600)")
    parser.add_argument("--answer", type=float, default=20, help="answer tokens per row")
    parser.add_argument("--crops", type=float, default=17, help="CLIP crops per row (16 sub-crops at most + global)")
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--out", default="outputs/bench-memory.json")
    args = parser.parse_args(argv)
    from ..phi3_v import Phi3VConfig

    shape = shape_of(Phi3VConfig())
    counted, formula = counted_layer_bytes_per_token(), layer_bytes_per_token(shape, 64)
    print(
        f"One full-size decoder layer with LoRA r 64 saves {counted:,.0f} bytes per token for the backward pass, "
        f"counted here; the formula says {formula:,}."
    )
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        for policy, every in POLICIES.items():
            parts = step_memory(
                shape, batch=batch, tokens=args.tokens, answer=args.answer, crops=args.crops, every=every, rank=64
            )
            rows.append(
                {"batch_size": batch, "checkpointing": policy} | {k: round(v / GIB, 1) for k, v in parts.items()}
            )
    from . import table, write_results

    print(
        f"\nEstimated GPU memory (GiB) of a LoRA step of the full-size model at {args.tokens:.0f} tokens per row, bf16\n"
        + table(rows, list(rows[0]))
    )
    results = {"layer_bytes_per_token": {"counted": counted, "formula": formula}, "tokens": args.tokens, "rows": rows}
    write_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
