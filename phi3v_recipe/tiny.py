"""Write a tiny random checkpoint of a Phi vision model in its hub layout, offline, in seconds.

    python -m phi3v_recipe.tiny OUT_DIR [--family phi3v|phi4mm] [--seed 0] [--num_crops N]

The Phi-3-Vision one is written here; other families' (Phi-4-multimodal: ``families/phi4mm.py``) by their own
module, on the same training corpus.

The checkpoint has the hub's files (config.json with `rope_scaling: su`, model.safetensors, tokenizer.json /
tokenizer_config.json, preprocessor_config.json, generation_config.json) and the hub's special-token ids, with
a small vocabulary trained here, a 2-layer Phi-3 decoder and a 3-layer CLIP tower (336px, 14px patches, so the
image-token counts are the real ones). The demo and the tests use it.
"""

import json
from pathlib import Path

from .errors import ArgumentParser, UserError, run
from .files import follow_umask

BASE_VOCAB = 32000  # the hub vocabulary size: special tokens start at 32000, as on the hub


def special_tokens() -> list[tuple[str, bool]]:
    """The hub's added tokens from id 32000 on, in id order, with their `rstrip` flag."""
    names = ["<|endoftext|>", "<|assistant|>"] + [f"<|placeholder{i}|>" for i in range(1, 5)]
    names += ["<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>"]
    names += [f"<|placeholder{i}|>" for i in range(7, 40)] + ["<|image|>"]
    keep_newline = {"<|endoftext|>", "<|system|>", "<|end|>", "<|user|>"}
    return [(name, name not in keep_newline) for name in names]


# Words the tiny vocabulary is trained on: the prompts and answers of the demo task, and common English.
CORPUS = """What is shown in this image? Describe the product. Compare the images.
Product: Category: Full Price: Title: The answer is
BAGS SHOES SCARVES COATS HATS WALLETS JACKETS DRESSES SHIRTS KNITWEAR ACCESSORIES
Tote Crossbody Bag Sneakers Ankle Boots Scarf Stole Trench Coat Car Coat Bucket Hat Baseball Cap Wallet Card Case
Bags Shoes Scarves Coats Jackets Dresses Shirts Trousers Skirts Hats Belts Wallets Sunglasses Watches Jewellery
Knitwear Sweaters Trench Check Monogram Leather Suede Cotton Wool Cashmere Silk Nylon Canvas Denim Linen Quilted
Black Beige Camel Navy Red Green Blue White Grey Brown Pink Burgundy Olive Cream Archive Heritage Classic Vintage
Small Medium Large Mini Tote Crossbody Shoulder Bucket Clutch Backpack Sneakers Boots Loafers Sandals Cap Bucket Hat
the a an of and with in on for to is are was it this that men women kids
0 1 2 3 4 5 6 7 8 9 10 20 50 100 250 490 590 790 890 990 1090 1290 1490 1890 2290 2490 2890 3290 3990 4590
. , : ; ! ? - ' " ( ) $ % / & +
"""


def build_tokenizer(vocab_size: int = 1200):
    """A byte-fallback BPE with the Phi-3 normaliser, BOS post-processor, special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import TokenizersBackend

    from .phi3_v.processing_phi3_v import HUB_CHAT_TEMPLATE

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    # Train on words (split at "▁") so merges stay inside words; the hub tokenizer itself has no pre-tokenizer.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens], show_progress=False
    )
    lines = CORPUS.splitlines() * 20
    tok.train_from_iterator(lines, trainer=trainer)
    tok.pre_tokenizer = None

    # Fill the vocabulary up to the hub's 32000 entries with unreachable tokens so the special ids match the hub.
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for i in range(len(vocab), BASE_VOCAB):
        vocab[f"<|unused{i}|>"] = i
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] < 3]
    for token_id, (name, rstrip) in enumerate(special_tokens(), start=BASE_VOCAB):
        spec["added_tokens"].append(
            {
                "id": token_id,
                "content": name,
                "single_word": False,
                "lstrip": False,
                "rstrip": rstrip,
                "normalized": False,
                "special": True,
            }
        )
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return TokenizersBackend(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        padding_side="right",
        chat_template=HUB_CHAT_TEMPLATE,  # as the hub files have it; Phi3VProcessor renders typed content
        model_max_length=131072,
    )


def tiny_config_dict() -> dict:
    """A small Phi-3-Vision config.json exactly in the hub's format (`su` rope, `embd_layer` / `img_processor`
    dicts, flash-attention baked in, no `pad_token_id`), plus a `vision_config` for a small CLIP tower."""
    head_dim = 16
    return {
        "architectures": ["Phi3VForCausalLM"],
        "model_type": "phi3_v",
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "embd_layer": {
            "embedding_cls": "image",
            "hd_transform_order": "sub_glb",
            "projection_cls": "mlp",
            "use_hd_transform": True,
            "with_learnable_separator": True,
        },
        "hidden_act": "silu",
        "hidden_size": 64,
        "img_processor": {
            "image_dim_out": 32,
            "model_name": "tiny-clip-336",
            "name": "clip_vision_model",
            "num_img_tokens": 144,
        },
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "max_position_embeddings": 131072,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 4,
        "original_max_position_embeddings": 4096,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "long_factor": [1.0 + 4.0 * i for i in range(head_dim // 2)],
            "short_factor": [1.0 + 0.1 * i for i in range(head_dim // 2)],
            "type": "su",
        },
        "rope_theta": 10000.0,
        "sliding_window": 131072,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": 32064,
        "_attn_implementation": "flash_attention_2",
        # Not in hub configs (absent means CLIP ViT-L/14-336): a 3-layer tower at the real resolution.
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "image_size": 336,
            "patch_size": 14,
            "projection_dim": 32,
        },
    }


def preprocessor_config_dict(num_crops: int) -> dict:
    """preprocessor_config.json in the hub's format."""
    return {
        "num_crops": num_crops,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Phi3VImageProcessor",
        "processor_class": "Phi3VProcessor",
        "num_img_tokens": 144,
        "do_convert_rgb": True,
    }


def build_model(seed: int = 0):
    """The tiny model with random weights; separators and norms are randomised too so that no part is a no-op.
    The output head gets a 1/sqrt(hidden) scale so that a few LoRA steps can move the logits (as a trained head can)."""
    import torch

    from .phi3_v import Phi3VConfig, Phi3VForCausalLM

    torch.manual_seed(seed)
    config = Phi3VConfig.from_dict(tiny_config_dict())
    config._attn_implementation = "eager"
    model = Phi3VForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or "layrnorm" in name:
                noise = 0.1 * torch.randn_like(param)
                param.copy_(1.0 + noise if name.endswith("weight") else noise)
            elif name == "lm_head.weight":
                param.normal_(0.0, config.hidden_size**-0.5)
            else:
                param.normal_(0.0, 0.05)
    return model


def write_tiny_checkpoint(out_dir: str | Path, seed: int = 0, num_crops: int = 4, max_shard_size: str = "5GB") -> Path:
    """Write the tiny checkpoint (model, tokenizer, processor, generation config) to ``out_dir``."""
    from transformers import GenerationConfig

    out = Path(out_dir)
    build_model(seed).save_pretrained(out, max_shard_size=max_shard_size)
    follow_umask(out)
    # The hub's own files, written as the hub has them (save_pretrained would modernise config.json).
    (out / "config.json").write_text(json.dumps(tiny_config_dict(), indent=2) + "\n")
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor_config_dict(num_crops), indent=2) + "\n")
    build_tokenizer().save_pretrained(out)
    GenerationConfig(bos_token_id=1, eos_token_id=[32007, 32000], pad_token_id=32000).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument(
        "--family", default="phi3v", help="phi3v (Phi-3-Vision, the default) or phi4mm (Phi-4-multimodal)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--num_crops", type=int, default=None, help="most crops per image (default: phi3v 4, phi4mm 2 as dynamic_hd)"
    )
    parser.add_argument(
        "--size", choices=("tiny", "full"), default="tiny", help="full: the model of --hub_dir's config, full size"
    )
    parser.add_argument(
        "--hub_dir", default=None, help="with --size full: a hub checkpoint's files (config.json, ...; phi3v)"
    )
    parser.add_argument("--layers", type=int, default=None, help="with --size full --family phi4mm: decoder layers")
    args = parser.parse_args(argv)
    if args.size == "full" and args.family == "phi4mm":  # its config is transformers' (the hub's values)
        from .families.phi4mm import write_full_size

        write_full_size(Path(args.out_dir), CORPUS, seed=args.seed, layers=args.layers)
        return
    if args.size == "full":
        from .fullsize import write_full_size

        if args.hub_dir is None:
            raise UserError("--size full needs --hub_dir: the hub files of a Phi-3/3.5-Vision (config.json, index).")
        write_full_size(Path(args.hub_dir), Path(args.out_dir), seed=args.seed)
        return
    from .families import by_name

    family = by_name(args.family)
    out = Path(args.out_dir)
    extra = {"crops": args.num_crops} if args.num_crops is not None else {}
    family.write_tiny(out, CORPUS, seed=args.seed, **extra)
    follow_umask(out)
    print(f"Wrote a tiny random {family.HUB_MODEL.split('/')[-1]} checkpoint ({family.NAME}) to {out}")


if __name__ == "__main__":
    run(main)
