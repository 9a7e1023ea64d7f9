"""Phi-4-multimodal-instruct (``model_type: phi4_multimodal``), images and text, on transformers' own model.

- **Checkpoint**: ``microsoft/Phi-4-multimodal-instruct`` at revision ``refs/pr/70``, the weights transformers 5
  loads natively (its own integration tests and vLLM's pin the same revision). The base has no vision adapter in its
  weights: the model's vision LoRA ships beside it, as a PEFT adapter in ``vision-lora/``.
- **Trainable parts**, as Microsoft's ``sample_finetune_vision.py``: the vision LoRA (continued from the one in
  ``vision-lora/``, its rank and targets) and the whole image embedding (SigLIP tower and projection) as a saved
  module, trained in fp32 (``train.train_saved_modules_in_fp32``). The SigLIP layer past the feature layer, its
  pooling head and the audio encoder never reach the loss: they are frozen (the sample leaves them trainable and
  turns on ``ddp_find_unused_parameters``; they get no gradient either way), and the head is not run
  (``skip_unused``).
- **Prompt**: ``<|user|>`` + images (``<|image|>`` each) + text + ``<|end|>``, then ``<|assistant|>`` + answer +
  ``<|end|>``, and ``<|endoftext|>`` closing the conversation, with no newlines, as the hub's chat template and the
  sample write them. The processor expands each ``<|image|>`` to the image's token count.
- **Processor**: transformers' ``Phi4MultimodalProcessor`` with the torch-only image processor of
  ``phi4mm_images.py``; it saves in transformers' format.
"""

import contextlib
import json
import re
from pathlib import Path

import torch
from transformers import AutoTokenizer, Phi4MultimodalFeatureExtractor, Phi4MultimodalProcessor

from ..errors import UserError
from .phi4mm_images import Phi4MMImageProcessor

NAME = "phi4mm"
MODEL_TYPE = "phi4_multimodal"
HUB_MODEL = "microsoft/Phi-4-multimodal-instruct"
HUB_REVISION = "refs/pr/70"
ADAPTER_FOLDER = "vision-lora"
# The vision LoRA's targets: the decoder's four projections. A pattern, not bare names: the audio encoder has
# modules of the same names.
LORA_TARGETS = r"model\.layers\.\d+\.(self_attn\.(qkv_proj|o_proj)|mlp\.(gate_up_proj|down_proj))"
QUANTIZATION_SKIP = ["model.embed_tokens_extend", "lm_head"]
VISION_LORA_RANK = 256  # the hub checkpoint's vision-lora/adapter_config.json
TRAINED_MODULES = ["image_embed"]  # saved with the adapter: the whole image embedding trains, as in the sample

# The hub's ids, as transformers' Phi4MultimodalConfig defaults give them: end-of-text (also BOS and padding), the
# image and audio tokens, and <|end|> (the second end-of-sequence id). The role tokens follow Phi-4-mini's tokenizer.
SPECIAL_IDS = {
    "<|endoftext|>": 199999,
    "<|image|>": 200010,
    "<|audio|>": 200011,
    "<|assistant|>": 200019,
    "<|end|>": 200020,
    "<|user|>": 200021,
    "<|system|>": 200022,
}

# Typed content (`{"type": "text"}` / `{"type": "image"}`) in order, each image as `<|image|>`. Assistant turns (and
# the end-of-text after a final answer) sit in generation markers, for `return_assistant_tokens_mask=True`.
CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{%- for item in content -%}"
    "{%- if item['type'] == 'text' -%}{{- item['text'] -}}"
    "{%- elif item['type'] == 'image' -%}{{- '<|image|>' -}}"
    "{%- else -%}{{- raise_exception('Phi-4-multimodal chat messages hold text and image items here, not ' "
    "~ item['type']) -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- render(message['content'] or '') + '<|end|>' -}}"
    "{%- if loop.last and not add_generation_prompt -%}{{- eos_token -}}{%- endif -%}{%- endgeneration -%}"
    "{%- else -%}{{- render(message['content'] or '') + '<|end|>' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}"
    "{%- elif messages[-1]['role'] != 'assistant' -%}{{- eos_token -}}{%- endif -%}"
)


class Phi4MMProcessor(Phi4MultimodalProcessor):
    """transformers' processor with the torch-only image processor, our chat template, and image-token counts from
    image sizes alone (for the length checks of data preparation). Saved, it is transformers' own."""

    @classmethod
    def from_pretrained(cls, path, revision=None, dynamic_hd: int | None = None, **kwargs):
        if kwargs:
            raise TypeError(f"The Phi-4-multimodal processor does not take {', '.join(sorted(kwargs))}.")
        image_settings = read_image_settings(path, revision)
        if dynamic_hd is not None:
            image_settings["dynamic_hd"] = dynamic_hd
        image_processor = Phi4MMImageProcessor(**{k: v for k, v in image_settings.items() if k in IMAGE_SETTINGS})
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
        return cls(image_processor, Phi4MultimodalFeatureExtractor(), tokenizer, chat_template=CHAT_TEMPLATE)

    def __call__(self, text=None, images=None, **kwargs):
        """Texts first, then images, as every processor of this project (transformers' generic one takes images
        first); a batch is padded, on the left unless ``padding_side`` says otherwise (what generation needs)."""
        kwargs.setdefault("padding", True)
        kwargs.setdefault("padding_side", "left")
        return super().__call__(images=images, text=text, **kwargs)

    def to_dict(self) -> dict:
        return super().to_dict() | {"processor_class": "Phi4MultimodalProcessor"}

    def num_image_tokens(self, width: int, height: int) -> int:
        """Tokens one image of this size becomes, from its size alone."""
        return self.image_processor.num_image_tokens(width, height)

    def encode(self, text: str, image_sizes: list[tuple[int, int]]) -> list[int]:
        """Ids of ``text`` with each ``<|image|>`` expanded for an image of the given (width, height)."""
        ids, image_id, sizes = [], self.image_token_id, iter(image_sizes)
        for token in self.tokenizer(text, add_special_tokens=False)["input_ids"]:
            ids += [image_id] * self.num_image_tokens(*next(sizes)) if token == image_id else [token]
        return ids


IMAGE_SETTINGS = {"dynamic_hd", "patch_size", "crop_size", "size", "image_mean", "image_std"}


def read_image_settings(path, revision=None) -> dict:
    """The image processor's settings: in processor_config.json (as transformers 5 saves them), else in
    preprocessor_config.json; from a local folder or a hub checkpoint (the cache when offline)."""
    from transformers.utils import cached_file

    found = cached_file(path, "processor_config.json", revision=revision, _raise_exceptions_for_missing_entries=False)
    settings = json.loads(Path(found).read_text()).get("image_processor") if found else None
    if settings is None:
        settings = json.loads(Path(cached_file(path, "preprocessor_config.json", revision=revision)).read_text())
    return settings


CROP_KEY = "dynamic_hd"  # the recipe key (and processor setting) of the most crops per image


def load_processor(path, revision=None, crops: int | None = None):
    """The checkpoint's processor, at ``crops`` crops per image at most when given."""
    return Phi4MMProcessor.from_pretrained(path, revision, crops)


def processor_class():
    return Phi4MMProcessor


def crop_setting(processor) -> tuple[str, int]:
    """The processor's crop setting, as its config file names it."""
    return CROP_KEY, processor.image_processor.dynamic_hd


def batch_images(examples: list[dict]) -> dict:
    """The image inputs of several encoded examples as one batch: crop slots padded to the longest (zero pixels,
    masks of ones, as the image processor pads a batch)."""
    slots = max(example["image_pixel_values"].shape[1] for example in examples)

    def padded(tensor, value):
        pad = [0, 0] * (tensor.dim() - 2) + [0, slots - tensor.shape[1]]
        return torch.nn.functional.pad(tensor, pad, value=value)

    return {
        "image_pixel_values": torch.cat([padded(e["image_pixel_values"], 0) for e in examples]),
        "image_attention_mask": torch.cat([padded(e["image_attention_mask"], 1) for e in examples]),
        "image_sizes": torch.cat([e["image_sizes"] for e in examples]),
    }


def for_grpo(model, processor):
    """The processor TRL's GRPOTrainer is given, and ``model`` made to read the images it passes. TRL 1.16 carries a
    batch's images only under the names it knows: ``pixel_values`` (split, shuffled and sliced one entry per image,
    beside ``image_sizes``); it drops other names and reads no ``image_attention_mask``. So the images go to it as
    one ``pixel_values`` entry per image, the crop masks a fourth channel of the crops (each mask cell over its
    patch), and the model turns them back into Phi-4's inputs as a forward (a hook) or ``generate`` receives them."""
    patch = model.config.vision_config.patch_size
    causal_lm = next(module for module in model.modules() if type(module).__name__ == "Phi4MultimodalForCausalLM")
    causal_lm.register_forward_pre_hook(lambda _, args, kwargs: (args, unpacked(kwargs, patch)), with_kwargs=True)
    generate = causal_lm.generate  # PEFT's generate calls the model's; generate checks its inputs' names first
    causal_lm.generate = lambda *args, **kwargs: generate(*args, **unpacked(kwargs, patch))
    return PackedImagesProcessor(processor.image_processor, processor.audio_processor, processor.tokenizer,
                                 chat_template=processor.chat_template)  # fmt: skip


class PackedImagesProcessor(Phi4MMProcessor):
    """The processor, with each image's pixels and crop mask packed in one ``pixel_values`` entry (``for_grpo``)."""

    def __call__(self, text=None, images=None, **kwargs):
        inputs = super().__call__(text=text, images=images, **kwargs)
        if "image_pixel_values" in inputs:
            pixels, mask = inputs.pop("image_pixel_values"), inputs.pop("image_attention_mask")
            patch = pixels.shape[-1] // mask.shape[-1]
            cells = mask.repeat_interleave(patch, -2).repeat_interleave(patch, -1).unsqueeze(2).to(pixels.dtype)
            inputs["pixel_values"] = torch.cat([pixels, cells], dim=2)  # (images, crops, 3 + 1, side, side)
        return inputs


def unpacked(kwargs: dict, patch: int) -> dict:
    """A forward's keyword arguments with a packed ``pixel_values`` back as ``image_pixel_values`` and
    ``image_attention_mask`` (``for_grpo``)."""
    if kwargs.get("pixel_values") is None:
        kwargs.pop("pixel_values", None)
        return kwargs
    packed = kwargs.pop("pixel_values")
    return kwargs | {"image_pixel_values": packed[:, :, :3], "image_attention_mask": packed[:, :, 3, ::patch, ::patch]}


def vision_tower(model) -> torch.nn.Module:
    return model.model.embed_tokens_extend.image_embed.img_processor


def unused_modules(model) -> list[torch.nn.Module]:
    """Modules that never reach the loss on images and text: the SigLIP layers past the feature layer, its
    post-layernorm and pooling head, and the audio encoder."""
    embed = model.model.embed_tokens_extend
    tower = embed.image_embed.img_processor
    layers = tower.encoder.layers
    past = list(layers)[len(layers) + embed.image_embed.layer_idx + 1 :]
    return [*past, tower.post_layernorm, tower.head, embed.audio_embed]


def skip_unused(model) -> None:
    """Not run: SigLIP's pooling head, whose output nothing reads (the image embedding takes a hidden layer). Under
    autograd its attention's input projection (a [1024, crops, 1152] input, seq-first) is computed by torch.matmul
    as a batched product over a copy of the weight expanded 1,024 times: 5.4 GB made and dropped in every training
    forward, whatever the crops (measured on the CPU; the same code path on a GPU). Its weights stay in the model."""
    model.model.embed_tokens_extend.image_embed.img_processor.head.forward = lambda *args, **kwargs: None


def adapter_folder(path, revision=None) -> Path:
    """The checkpoint's vision-lora/ as a local folder (a hub checkpoint's from the cache, or downloaded). Resolved
    here: PEFT 0.21 looks for a subfolder's files at subfolder/subfolder/ when offline."""
    if Path(path).expanduser().is_dir():
        return Path(path).expanduser() / ADAPTER_FOLDER
    from huggingface_hub import snapshot_download

    return (
        Path(snapshot_download(str(path), revision=revision, allow_patterns=[f"{ADAPTER_FOLDER}/*"])) / ADAPTER_FOLDER
    )


def peft_model(model, model_args, path, revision=None):
    """The checkpoint's own vision LoRA (from ``vision-lora/``: its weights, rank and targets), made trainable, with
    the whole image embedding trained and saved beside it, as Microsoft's sample trains them. The recipe's LoRA keys
    (rank, alpha, dropout, targets) are not read: the adapter is the model's."""
    from peft import (
        LoraConfig,
        get_peft_model,
        get_peft_model_state_dict,
        load_peft_weights,
        set_peft_model_state_dict,
    )

    try:
        folder = str(adapter_folder(path, revision))
        config = LoraConfig.from_pretrained(folder)
        weights = load_peft_weights(folder)
    except (OSError, ValueError) as err:
        raise UserError(
            f"{path} has no readable vision adapter in {ADAPTER_FOLDER}/ ({type(err).__name__}: {err}); "
            f"Phi-4-multimodal's images need it: use {HUB_MODEL} at revision {HUB_REVISION}."
        ) from None
    config.inference_mode = False
    config.modules_to_save = TRAINED_MODULES
    config.revision = revision  # saved: the base revision the adapter applies to
    peft = get_peft_model(model, config)
    state = get_peft_model_state_dict(peft)  # the LoRA (freshly initialised) and the image embedding's copy
    strangers = sorted(set(weights) - set(state))
    if strangers:
        raise UserError(f"{path}/{ADAPTER_FOLDER} holds weights this model has no place for, such as {strangers[0]}.")
    set_peft_model_state_dict(peft, state | weights)
    for module in unused_modules(peft.get_base_model()):  # the trained copy's parts that never reach the loss
        module.requires_grad_(False)
    return peft


def as_shipped(model):
    """A context in which ``model`` (the base with a trained adapter) answers as its checkpoint ships: the base with
    the checkpoint's own vision LoRA and image embedding, not the bare base (which is untrained for images). That
    adapter is read from the base once, as a second adapter of the model; the trained one is active again after."""

    @contextlib.contextmanager
    def shipped():
        if SHIPPED not in model.peft_config:
            config = model.peft_config[model.active_adapter]
            model.load_adapter(str(adapter_folder(config.base_model_name_or_path, config.revision)), SHIPPED)
        trained = model.active_adapter
        model.set_adapter(SHIPPED)  # the image embedding's trained copy has no SHIPPED entry: the original serves
        try:
            yield
        finally:
            model.set_adapter(trained)

    return shipped


SHIPPED = "as-shipped"


CARD_ADAPTER = """
In transformers 5 with PEFT, on the base at its revision (the adapter replaces the checkpoint's vision LoRA and
image embedding with the trained ones):

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoProcessor

base = AutoModelForCausalLM.from_pretrained("{base_model}"{revision_arg}, dtype="auto")
model = PeftModel.from_pretrained(base, "{repo_or_dir}")
processor = AutoProcessor.from_pretrained("{repo_or_dir}")  # transformers' own processor needs torchvision
```

Merged (`python -m phi3v_recipe.predict --adapter {repo_or_dir} --image product.jpg --merge merged`), it is a plain
`Phi4MultimodalForCausalLM` folder with the vision adapter folded in, loaded without an adapter.
"""
CARD_MODEL = """
```python
from transformers import AutoModelForCausalLM, AutoProcessor

model = AutoModelForCausalLM.from_pretrained("{repo_or_dir}", dtype="auto")
processor = AutoProcessor.from_pretrained("{repo_or_dir}")  # transformers' own processor needs torchvision
```
"""


def card_usage(base_model: str, repo_or_dir: str, adapter: bool, revision: str | None) -> str:
    """The model card's "Usage" code after the predict command."""
    revision_arg = f', revision="{revision}"' if revision not in (None, "main") else ""
    template = CARD_ADAPTER if adapter else CARD_MODEL
    return template.format(base_model=base_model, repo_or_dir=repo_or_dir, revision_arg=revision_arg)


def merged_note(base_dir) -> str:
    """Where a merged folder of this base loads."""
    return (
        "It loads in transformers 5 as Phi4MultimodalForCausalLM with the vision adapter folded in: load it without "
        f"an adapter (its {ADAPTER_FOLDER}/ is not carried over)."
    )


def tiny_config_dict() -> dict:
    """A small Phi-4-multimodal config: the hub's token ids and vocabulary, a 2-layer decoder, a 3-layer SigLIP
    tower at the real resolution (448px crops of 14px patches, so the image-token counts are the real ones) and a
    1-block audio encoder."""
    from transformers import Phi4MultimodalConfig

    config = Phi4MultimodalConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        eos_token_id=[SPECIAL_IDS["<|endoftext|>"], SPECIAL_IDS["<|end|>"]],
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2},
        audio_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_blocks": 1,
            "num_attention_heads": 2,
            "ext_pw_out_channel": 32,
            "depthwise_separable_out_channel": 32,
            "nemo_conv_channels": 32,
        },
    )
    config.architectures = ["Phi4MultimodalForCausalLM"]
    return config.to_dict()


def build_tokenizer(corpus: str, vocab_size: int = 1200):
    """A byte-level BPE (as Phi-4's) trained on ``corpus``, filled up to the hub's ids, with its special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import TokenizersBackend

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus.splitlines() * 20, trainer=trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    first_special = min(SPECIAL_IDS.values())
    for i in range(len(vocab), first_special):
        vocab[f"<|unused{i}|>"] = i
    names = {token_id: name for name, token_id in SPECIAL_IDS.items()}
    last = max(SPECIAL_IDS.values())
    spec["added_tokens"] = [
        {
            "id": token_id,
            "content": names.get(token_id, f"<|dummy_{token_id}|>"),
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for token_id in range(first_special, last + 1)
    ]
    return TokenizersBackend(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image|>", "audio_token": "<|audio|>"},
        padding_side="right",
        chat_template=CHAT_TEMPLATE,
        model_max_length=131072,
    )


def build_model(seed: int = 0):
    """The tiny model with random weights (norms randomised too, and the output head scaled to 1/sqrt(hidden) so
    that a few steps can move the logits)."""
    from transformers import Phi4MultimodalConfig, Phi4MultimodalForCausalLM

    torch.manual_seed(seed)
    config = Phi4MultimodalConfig.from_dict(tiny_config_dict())
    model = Phi4MultimodalForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                noise = 0.1 * torch.randn_like(param)
                param.copy_(1.0 + noise if name.endswith("weight") else noise)
            elif name == "lm_head.weight":
                param.normal_(0.0, config.hidden_size**-0.5)
            elif param.dim() > 1 or "extensor" in name:
                param.normal_(0.0, 0.05)
    return model


def write_tiny(out: Path, corpus: str, seed: int = 0, crops: int = 2) -> None:
    """A tiny random checkpoint in the hub's layout: the base model, its tokenizer and processor files, and a random
    vision LoRA in ``vision-lora/`` (rank 8 here; the hub's is rank 256)."""
    from peft import LoraConfig, get_peft_model
    from transformers import GenerationConfig

    model = build_model(seed)
    model.save_pretrained(out)
    tokenizer = build_tokenizer(corpus)
    processor = Phi4MMProcessor(
        Phi4MMImageProcessor(dynamic_hd=crops),
        Phi4MultimodalFeatureExtractor(),
        tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    end_of_text = SPECIAL_IDS["<|endoftext|>"]
    GenerationConfig(
        bos_token_id=end_of_text, eos_token_id=[end_of_text, SPECIAL_IDS["<|end|>"]], pad_token_id=end_of_text
    ).save_pretrained(out)
    torch.manual_seed(seed + 1)
    lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS))
    with torch.no_grad():  # a vision adapter that does something: both LoRA matrices random
        for name, param in lora.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.05)
    lora.save_pretrained(out / ADAPTER_FOLDER)


def write_full_size(out: Path, corpus: str, seed: int = 0, layers: int | None = None, crops: int = 36) -> None:
    """A random Phi-4-multimodal at the real size, offline: transformers' ``Phi4MultimodalConfig`` (its defaults are
    the hub checkpoint's at revision ``refs/pr/70``: 32 layers of 3,072, a 200,064-word vocabulary, a 27-layer SigLIP
    tower, the audio encoder), bf16 weights filled once from the meta device (``fullsize.write_random``), and a
    random vision LoRA of the hub's rank (256) in ``vision-lora/``. The hub's tokenizer is not here: the tiny one
    stands in (its ids are the hub's special ids). ``layers``: fewer decoder layers (a scaled-down model, every other
    size real)."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import Phi4MultimodalConfig, Phi4MultimodalForCausalLM

    from ..files import follow_umask
    from ..fullsize import write_random

    config = Phi4MultimodalConfig(eos_token_id=[SPECIAL_IDS["<|endoftext|>"], SPECIAL_IDS["<|end|>"]])
    if layers is not None:
        config.num_hidden_layers = layers
    config.architectures = ["Phi4MultimodalForCausalLM"]
    config.dtype = torch.bfloat16
    write_random(config, Phi4MultimodalForCausalLM, out, seed)
    tokenizer = build_tokenizer(corpus)
    Phi4MMProcessor(
        Phi4MMImageProcessor(dynamic_hd=crops),
        Phi4MultimodalFeatureExtractor(),
        tokenizer,
        chat_template=CHAT_TEMPLATE,
    ).save_pretrained(out)
    with torch.device("meta"):
        linears = {
            name: module
            for name, module in Phi4MultimodalForCausalLM(config).named_modules()
            if isinstance(module, torch.nn.Linear) and re.fullmatch(LORA_TARGETS, name)
        }
    generator = torch.Generator().manual_seed(seed + 1)
    rank = VISION_LORA_RANK
    weights = {}
    for name, module in linears.items():  # PEFT's names; A random, B small: an adapter that does something
        prefix = f"base_model.model.{name}"
        weights[f"{prefix}.lora_A.weight"] = torch.empty(rank, module.in_features, dtype=torch.bfloat16).normal_(
            0.0, 0.02, generator=generator
        )
        weights[f"{prefix}.lora_B.weight"] = torch.empty(module.out_features, rank, dtype=torch.bfloat16).normal_(
            0.0, 0.002, generator=generator
        )
    folder = out / ADAPTER_FOLDER
    LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=LORA_TARGETS).save_pretrained(folder)
    save_file(weights, folder / "adapter_model.safetensors")
    follow_umask(out)
