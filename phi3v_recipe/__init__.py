"""phi3v-recipe: fine-tune Phi-3-Vision / Phi-3.5-Vision with TRL.

Importing the package registers the native ``phi3_v`` model with transformers' Auto classes (one class serves
``AutoModelForCausalLM`` and ``AutoModelForImageTextToText``), so hub checkpoints load without ``trust_remote_code``
and the ``image-text-to-text`` pipeline works.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from .phi3_v import Phi3VConfig, Phi3VForCausalLM, Phi3VImageProcessor, Phi3VModel, Phi3VProcessor

AutoConfig.register("phi3_v", Phi3VConfig, exist_ok=True)
AutoModel.register(Phi3VConfig, Phi3VModel, exist_ok=True)
AutoModelForCausalLM.register(Phi3VConfig, Phi3VForCausalLM, exist_ok=True)
AutoModelForImageTextToText.register(Phi3VConfig, Phi3VForCausalLM, exist_ok=True)
AutoImageProcessor.register(Phi3VConfig, image_processor_classes={"pil": Phi3VImageProcessor}, exist_ok=True)
AutoProcessor.register(Phi3VConfig, Phi3VProcessor, exist_ok=True)

__all__ = ["Phi3VConfig", "Phi3VForCausalLM", "Phi3VImageProcessor", "Phi3VModel", "Phi3VProcessor"]
