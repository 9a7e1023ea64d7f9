"""Phi-3-Vision and Phi-3.5-Vision (``model_type: phi3_v``), on this project's native model (``phi3_v/``).

- **Checkpoint**: the hub's, unchanged (``microsoft/Phi-3-vision-128k-instruct``, ``microsoft/Phi-3.5-vision-instruct``).
- **Trainable parts**: LoRA on the Phi-3 decoder's projections (the official recipe's), or a full fine-tune with the
  CLIP tower frozen (``freeze_vision_tower``). CLIP's layers past its feature layer never reach the loss: frozen.
- **Prompt**: ``<|user|>\\n<|image_1|>\\n{question}<|end|>\\n<|assistant|>\\n{answer}<|end|>\\n<|endoftext|>`` (the
  processor's chat template, ``phi3_v/processing_phi3_v.py``); ``num_crops`` sets the HD crops per image.
"""

import torch

NAME = "phi3v"
MODEL_TYPE = "phi3_v"
HUB_MODEL = "microsoft/Phi-3-vision-128k-instruct"
# LoRA goes on the language model: these names exist only in the Phi-3 decoder (CLIP uses q/k/v/out_proj, fc1/fc2).
LORA_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
# Kept out of 4-bit quantisation: the vision tower, separators and projection, and the output head. Full module
# prefixes: transformers 5 matches the skip list against full module names.
QUANTIZATION_SKIP = ["model.vision_embed_tokens", "lm_head"]


CROP_KEY = "num_crops"  # the recipe key (and processor setting) of the most crops per image


def load_processor(path, revision=None, crops: int | None = None):
    """The checkpoint's processor, at ``crops`` HD crops per image when given."""
    from transformers import AutoProcessor

    from .. import register

    register()
    extra = {"num_crops": crops} if crops is not None else {}
    return AutoProcessor.from_pretrained(path, revision=revision, **extra)


def processor_class():
    from ..phi3_v import Phi3VProcessor

    return Phi3VProcessor


def crop_setting(processor) -> tuple[str, int]:
    """The processor's crop setting, as its config file names it."""
    return CROP_KEY, processor.image_processor.num_crops


def batch_images(examples: list[dict]) -> dict:
    """The image inputs of several encoded examples as one batch."""
    return {
        "pixel_values": torch.cat([example["pixel_values"] for example in examples]),
        # Host data, not a tensor: the Trainer moves tensors to the GPU, and the model reads the sizes on the host to
        # pick each image's crops; from a GPU tensor that read would wait for the GPU at every step.
        "image_sizes": [size for example in examples for size in example["image_sizes"].tolist()],
    }


def for_grpo(model, processor):
    """The processor TRL's GRPOTrainer is given: this one, whose ``pixel_values`` and ``image_sizes`` TRL handles."""
    return processor


def vision_tower(model) -> torch.nn.Module:
    return model.model.vision_embed_tokens.img_processor


def unused_modules(model) -> list[torch.nn.Module]:
    """CLIP's layers past the feature layer and its post-layernorm: they never reach the outputs."""
    return model.model.vision_embed_tokens.unused_modules()


def skip_unused(model) -> None:
    """Nothing to skip: the native model's vision tower stops at its feature layer."""


def peft_model(model, model_args, path, revision=None):
    """None: a LoRA run takes TRL's own adapter, from the recipe's LoRA keys."""
    return None


def as_shipped(model):
    """A context in which ``model`` (the base with a trained adapter) answers as the base does: the adapter off."""
    return model.disable_adapter


CARD_USAGE = """
```python
import phi3v_recipe  # registers the native phi3_v model: no trust_remote_code
from transformers import AutoModelForImageTextToText, AutoProcessor
{load}
processor = AutoProcessor.from_pretrained("{repo_or_dir}")
```
{elsewhere}"""
LOAD_ADAPTER = """from peft import PeftModel

base = AutoModelForImageTextToText.from_pretrained("{base_model}", dtype="auto")
model = PeftModel.from_pretrained(base, "{repo_or_dir}")"""
LOAD_MODEL = """model = AutoModelForImageTextToText.from_pretrained("{repo_or_dir}", dtype="auto")"""
# An adapter also loads where most Phi-3-Vision users run it: the hub's own code, and vLLM once merged.
ELSEWHERE_ADAPTER = """
On the hub's own code (transformers 4.4x with `trust_remote_code`, PEFT 0.11 or newer):

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoProcessor

base = AutoModelForCausalLM.from_pretrained(
    "{base_model}", trust_remote_code=True, torch_dtype="auto", _attn_implementation="eager"
)
model = PeftModel.from_pretrained(base, "{repo_or_dir}")
processor = AutoProcessor.from_pretrained("{base_model}", trust_remote_code=True)
```

In vLLM, merged first (vLLM takes no LoRA for Phi-3-Vision; the merged folder is the base's, with new weights):

```bash
python -m phi3v_recipe.predict --adapter {repo_or_dir} --image product.jpg --merge merged
vllm serve merged --trust-remote-code
```
"""


def card_usage(base_model: str, repo_or_dir: str, adapter: bool, revision: str | None) -> str:
    """The model card's "Usage" code after the predict command."""
    names = {"base_model": base_model, "repo_or_dir": repo_or_dir}
    return CARD_USAGE.format(
        load=(LOAD_ADAPTER if adapter else LOAD_MODEL).format(**names),
        elsewhere=ELSEWHERE_ADAPTER.format(**names) if adapter else "",
        **names,
    )


def merged_note(base_dir) -> str:
    """Where a merged folder of this base loads."""
    from ..export import what_it_loads_in

    return what_it_loads_in(base_dir)


def write_tiny(out, corpus: str, seed: int = 0, crops: int = 4) -> None:
    from ..tiny import write_tiny_checkpoint

    write_tiny_checkpoint(out, seed=seed, num_crops=crops)  # prints nothing; the command says what it wrote
