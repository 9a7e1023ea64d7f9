"""Native Phi-3-Vision (``model_type: phi3_v``) for transformers 5.x."""

from .configuration_phi3_v import Phi3VConfig
from .image_processing_phi3_v import Phi3VImageProcessor, Phi3VImageProcessorPil, num_image_tokens
from .modeling_phi3_v import Phi3VForCausalLM, Phi3VModel
from .processing_phi3_v import Phi3VProcessor

__all__ = [
    "Phi3VConfig",
    "Phi3VForCausalLM",
    "Phi3VImageProcessor",
    "Phi3VImageProcessorPil",
    "Phi3VModel",
    "Phi3VProcessor",
    "num_image_tokens",
]
