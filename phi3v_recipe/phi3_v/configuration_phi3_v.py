"""Configuration of Phi-3-Vision / Phi-3.5-Vision: a Phi-3 language model plus a CLIP vision tower.

Reads the hub's config.json unchanged. The hub file predates transformers' ``longrope`` name and bakes
``_attn_implementation: flash_attention_2`` into the file; both are handled here.
"""

from transformers import CLIPVisionConfig, Phi3Config
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import is_flash_attn_2_available, logging

logger = logging.get_logger(__name__)

# The tower the hub checkpoints were trained with (openai/clip-vit-large-patch14-336). The hub config names
# it only by `img_processor.model_name`; the weights are in the checkpoint itself.
CLIP_VIT_L_14_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 336,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}


class Phi3VConfig(Phi3Config):
    r"""
    embd_layer (`dict`, *optional*):
        The hub's image-embedding settings (`hd_transform_order`, `with_learnable_separator`, ...). Only the HD
        `sub_glb` layout with learnable separators exists in released checkpoints, and only that is supported.
    img_processor (`dict`, *optional*):
        The hub's vision-tower settings: `image_dim_out` (CLIP width), `num_img_tokens` (tokens per crop after the
        2x2 merge), and optionally `layer_idx` (which CLIP hidden state is used, default -2).
    vision_config (`CLIPVisionConfig` or `dict`, *optional*):
        The CLIP vision tower. Absent in hub checkpoints, where it is CLIP ViT-L/14-336; tiny test checkpoints set it.
    image_token_id (`int`, *optional*, defaults to 32044):
        The token that marks image positions in `input_ids`: `<|image|>` in both hub tokenizers (and in vLLM).
    """

    model_type = "phi3_v"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=CLIPVisionConfig, init_kwargs=CLIP_VIT_L_14_336),
    }

    embd_layer: dict | None = None
    img_processor: dict | None = None
    vision_config: dict | CLIPVisionConfig | None = None
    image_token_id: int = 32044

    def __post_init__(self, **kwargs):
        self.embd_layer = {
            "embedding_cls": "image",
            "hd_transform_order": "sub_glb",
            "projection_cls": "mlp",
            "use_hd_transform": True,
            "with_learnable_separator": True,
            **(self.embd_layer or {}),
        }
        self.img_processor = {"image_dim_out": 1024, "num_img_tokens": 144, **(self.img_processor or {})}
        # The hub config.json bakes in `_attn_implementation: flash_attention_2`. Use it only when nothing was asked
        # for explicitly (`attn_implementation=`) and flash-attn is installed; otherwise keep transformers' default.
        file_attention = kwargs.pop("_attn_implementation", None)
        super().__post_init__(**kwargs)
        if self._attn_implementation is None and file_attention is not None:
            if file_attention != "flash_attention_2" or is_flash_attn_2_available():
                self._attn_implementation = file_attention
            else:
                logger.info(
                    "config.json asks for flash_attention_2, but flash-attn is not installed: using the default."
                )
        layout = (self.embd_layer["hd_transform_order"], self.embd_layer["use_hd_transform"])
        if layout != ("sub_glb", True) or not self.embd_layer["with_learnable_separator"]:
            raise ValueError(
                f"embd_layer={self.embd_layer} is not supported: every released Phi-3(.5)-Vision checkpoint uses "
                "use_hd_transform=true, hd_transform_order='sub_glb' and with_learnable_separator=true."
            )
        if self.img_processor["image_dim_out"] != self.vision_config.hidden_size:
            raise ValueError(
                f"img_processor.image_dim_out={self.img_processor['image_dim_out']} but the vision tower's "
                f"hidden_size is {self.vision_config.hidden_size}; make them equal."
            )

    def convert_rope_params_to_dict(self, default_theta=10_000.0, ignore_keys=None, **kwargs):
        # Hub configs say `"type": "su"`, the old name of longrope. Phi3Config renames it only after validating
        # the other keys, which then fails on transformers 5.x; rename it first.
        # Also state the scaling factor (max over original positions) that Phi-3 otherwise derives from
        # `original_max_position_embeddings`: the same attention factor, without transformers' warning about it.
        rope_scaling = kwargs.get("rope_scaling")
        if rope_scaling and rope_scaling.get("type") == "su":
            factor = self.max_position_embeddings / self.original_max_position_embeddings
            kwargs["rope_scaling"] = {k: v for k, v in rope_scaling.items() if k != "type"} | {
                "rope_type": "longrope",
                "factor": factor,
            }
        return super().convert_rope_params_to_dict(default_theta=default_theta, ignore_keys=ignore_keys, **kwargs)

    def to_dict(self) -> dict:
        """The config as saved: LongRoPE under the hub's own keys (``rope_scaling`` with ``type``, ``long_factor`` and
        ``short_factor``, ``rope_theta``), which the hub's remote code and vLLM read, instead of transformers 5's
        ``rope_parameters``: the hub code would silently run without LongRoPE otherwise. Read back, they give the
        same ``rope_parameters``."""
        out = super().to_dict()
        rope = out.pop("rope_parameters", None) or {}
        out["rope_theta"] = rope.get("rope_theta", 10_000.0)
        if rope.get("rope_type") == "longrope":
            out["rope_scaling"] = {
                "type": "su",
                "long_factor": rope["long_factor"],
                "short_factor": rope["short_factor"],
            }
        elif rope.get("rope_type", "default") == "default":
            out["rope_scaling"] = None
        else:  # another scaling has no hub form: kept as transformers 5 writes it
            out["rope_parameters"] = rope
        return out

    @property
    def vision_feature_layer(self) -> int:
        """The CLIP hidden state (index into `hidden_states`) whose patch tokens feed the projection."""
        return self.img_processor.get("layer_idx", -2)
