"""Phi-3-Vision for transformers 5.x, built from transformers' own Phi-3 decoder and CLIP vision blocks.

The module tree reproduces the hub checkpoints' parameter names exactly, so their safetensors load and save
unchanged: ``model.vision_embed_tokens.{img_processor.vision_model.*, glb_GN, sub_GN, img_projection.{0,2}}``
beside the usual Phi-3 ``model.*`` and ``lm_head``. The image embedding shares ``model.embed_tokens`` (the hub
files have no ``wte`` key).

Image positions are marked in ``input_ids`` by the in-vocabulary ``<|image|>`` token (``config.image_token_id``,
32044 in both hub tokenizers and in vLLM); the model writes the projected image features there in order of
appearance, as the reference implementation does with its negative ids. Negative ids from older callers are read as
that token, so they keep working.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, Phi3ForCausalLM, Phi3Model
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.models.clip.modeling_clip import CLIPEncoder, CLIPVisionEmbeddings
from transformers.models.phi3.modeling_phi3 import Phi3PreTrainedModel
from transformers.utils import can_return_tuple, is_torchdynamo_compiling
from transformers.utils.import_utils import torch_compilable_check

from .configuration_phi3_v import Phi3VConfig

CROP_SIZE = 336  # the HD transform tiles images into 336x336 crops


@dataclass
class Phi3VModelOutputWithPast(BaseModelOutputWithPast):
    """The language model's outputs and, when images were given, the image encoder's (``image_outputs``: see
    ``Phi3VModel.get_image_features``), as transformers' own VLMs return them."""

    image_outputs: BaseModelOutputWithPooling | None = None


@dataclass
class Phi3VCausalLMOutputWithPast(CausalLMOutputWithPast):
    """``CausalLMOutputWithPast`` with the image encoder's outputs (``image_outputs``)."""

    image_outputs: BaseModelOutputWithPooling | None = None


class Phi3VCLIPVisionTower(nn.Module):
    """CLIP's vision transformer, named as in the hub checkpoints (``vision_model.*``)."""

    def __init__(self, config):
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config)
        # Kept so that the checkpoints load and save unchanged; Phi-3-Vision never uses it (features come from
        # an inner layer, before any final norm).
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def layers_needed(self, layer: int) -> int:
        """How many encoder layers produce ``hidden_states[layer]`` (index 0 is the embeddings' output)."""
        return layer if layer >= 0 else len(self.encoder.layers) + 1 + layer

    def forward(self, pixel_values: torch.Tensor, layer: int, output_hidden_states=False, output_attentions=False):
        """``hidden_states[layer]`` of the CLIP encoder, running only the layers needed to get there; with
        ``output_hidden_states`` / ``output_attentions`` every layer runs, as CLIP's own outputs would give them, and
        the tuples of all hidden states / attention maps come back too (else None)."""
        hidden = self.pre_layrnorm(self.embeddings(pixel_values))
        states, attentions = [hidden], []
        everything = output_hidden_states or output_attentions
        layers = self.encoder.layers if everything else self.encoder.layers[: self.layers_needed(layer)]
        hooks = [  # CLIPAttention returns (output, weights); its weights exist under eager attention
            encoder_layer.self_attn.register_forward_hook(lambda module, args, out: attentions.append(out[1]))
            for encoder_layer in (layers if output_attentions else [])
        ]
        try:
            for encoder_layer in layers:
                hidden = encoder_layer(hidden, attention_mask=None)
                states.append(hidden)
        finally:
            for hook in hooks:
                hook.remove()
        return (
            states[self.layers_needed(layer)],
            tuple(states) if output_hidden_states else None,
            tuple(attentions) if output_attentions else None,
        )


class Phi3VImageEmbedding(nn.Module):
    """CLIP features of the HD crops, merged 2x2, laid out with learnable separators and projected to text width."""

    def __init__(self, config: Phi3VConfig):
        super().__init__()
        self.img_processor = nn.Module()
        self.img_processor.vision_model = Phi3VCLIPVisionTower(config.vision_config)
        self.feature_layer = config.vision_feature_layer
        merged_dim = config.img_processor["image_dim_out"] * 4
        self.glb_GN = nn.Parameter(torch.zeros(1, 1, merged_dim))
        self.sub_GN = nn.Parameter(torch.zeros(1, 1, 1, merged_dim))
        self.img_projection = nn.Sequential(
            nn.Linear(merged_dim, config.hidden_size), nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)
        )

    def forward(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor,
        output_hidden_states=False,
        output_attentions=False,
    ) -> BaseModelOutputWithPooling:
        """``pixel_values [images, crops+1, 3, 336, 336]``, ``image_sizes [images, 2]`` (padded H, W) -> the projected
        features of each image (``pooler_output``: one ``[image tokens, hidden]`` per image, in order), the CLIP hidden
        state they come from (``last_hidden_state [real crops, patches+1, clip width]``: each image's global view and
        sub-crops in turn, the empty slots left out, as LLaVA-NeXT packs its crops) and, when asked, CLIP's hidden
        states and attention maps over the same crops."""
        # Host data from the collator (a list) costs nothing; a tensor on a GPU is read back here (one sync).
        sizes = image_sizes.tolist() if torch.is_tensor(image_sizes) else image_sizes
        grids = [(int(h) // CROP_SIZE, int(w) // CROP_SIZE) for h, w in sizes]
        # Only real crops go through CLIP: slot 0 is the global image, then h*w sub-crops, then zero padding.
        crops = torch.cat([pixels[: 1 + h * w] for pixels, (h, w) in zip(pixel_values, grids)])
        vision = self.img_processor.vision_model
        crops = crops.to(dtype=vision.embeddings.patch_embedding.weight.dtype)
        # A frozen CLIP needs no autograd: nothing below it trains. With activation checkpointing on, each of its
        # layers would otherwise record its input for a backward pass that never comes (freed at once, but counted
        # by saved-tensor hooks: bench/step_memory.py's count of a step then depended on what else held them).
        trains = torch.is_grad_enabled() and any(p.requires_grad for p in vision.parameters())
        with torch.set_grad_enabled(trains):
            selected, hidden_states, attentions = vision(
                crops, self.feature_layer, output_hidden_states, output_attentions
            )
        merged = self._merge_2x2(selected[:, 1:])  # drop CLS
        tokens, counts, start = [], [], 0
        for h, w in grids:
            global_crop, sub_crops = merged[start], merged[start + 1 : start + 1 + h * w]
            start += 1 + h * w
            side = global_crop.shape[0]
            sub_grid = sub_crops.reshape(h, w, side, side, -1).transpose(1, 2).reshape(h * side, w * side, -1)
            tokens += [self._with_newlines(sub_grid), self.glb_GN[0], self._with_newlines(global_crop)]
            counts.append(sum(part.shape[0] for part in tokens[-3:]))
        projected = self.img_projection(torch.cat(tokens).to(self.img_projection[0].weight.dtype))
        return BaseModelOutputWithPooling(
            last_hidden_state=selected,
            pooler_output=projected.split(counts),
            hidden_states=hidden_states,
            attentions=attentions,
        )

    def unused_modules(self) -> list[nn.Module]:
        """CLIP parts kept only for checkpoint fidelity: the layers after the feature layer and post_layernorm."""
        vision = self.img_processor.vision_model
        return [*vision.encoder.layers[vision.layers_needed(self.feature_layer) :], vision.post_layernorm]

    @staticmethod
    def _merge_2x2(features: torch.Tensor) -> torch.Tensor:
        """``[n, side*side*4, C]`` patch features -> ``[n, side, side, 4C]``, each 2x2 block concatenated row-major."""
        n, num_patches, dim = features.shape
        side = int(num_patches**0.5) // 2
        blocks = features.reshape(n, side, 2, side, 2, dim).permute(0, 1, 3, 2, 4, 5)
        return blocks.reshape(n, side, side, 4 * dim)

    def _with_newlines(self, grid: torch.Tensor) -> torch.Tensor:
        """Append the ``sub_GN`` separator after every row of a ``[rows, cols, D]`` grid and flatten it."""
        newline = self.sub_GN[0].expand(grid.shape[0], 1, -1)
        return torch.cat([grid, newline], dim=1).reshape(-1, grid.shape[-1])


def reads_back(device: torch.device) -> bool:
    """Whether reading a value of a tensor on ``device`` is free (the CPU) or waits for the device (a GPU sync)."""
    return device.type == "cpu"


def check_image_positions(mask: torch.Tensor, rows: int) -> None:
    """The ids hold one image position per feature row. On a GPU the check runs on the device (``_assert_async``: a
    mismatch fails the step without the host waiting for the GPU at every forward); on the CPU it raises at once."""
    if not reads_back(mask.device) and not is_torchdynamo_compiling():
        torch._assert_async(
            mask.sum() == rows, f"the inputs' image positions and the images' {rows} feature rows differ"
        )
        return
    torch_compilable_check(
        mask.sum() == rows,
        lambda: (
            f"The inputs hold {int(mask.sum())} image positions but the images give {rows} feature rows; the ids "
            "and pixel_values must come from the same processor call."
        ),
    )


class Phi3VPreTrainedModel(Phi3PreTrainedModel):
    config: Phi3VConfig
    input_modalities = ("image", "text")
    _no_split_modules = ["Phi3DecoderLayer", "CLIPEncoderLayer"]
    # Some conversions of the hub checkpoints store the shared embedding a second time under this name.
    _keys_to_ignore_on_load_unexpected = [r"model\.vision_embed_tokens\.wte\."]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, CLIPVisionEmbeddings):
            init.normal_(module.class_embedding, std=module.embed_dim**-0.5)
            init.copy_(module.position_ids, torch.arange(module.num_positions).expand((1, -1)))
        elif isinstance(module, Phi3VImageEmbedding):
            init.zeros_(module.glb_GN)
            init.zeros_(module.sub_GN)


class Phi3VModel(Phi3VPreTrainedModel, Phi3Model):
    def __init__(self, config: Phi3VConfig):
        super().__init__(config)
        # The CLIP tower is a plain module here (its parameter names must match the hub files), so transformers
        # does not resolve its attention implementation on its own: it follows the language model's.
        config.vision_config._attn_implementation_internal = config._attn_implementation
        self.vision_embed_tokens = Phi3VImageEmbedding(config)
        self.post_init()

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor, output_hidden_states=None, output_attentions=None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:  # fmt: skip
        """The image encoder's outputs: ``pooler_output`` holds each image's projected features (``[image tokens,
        hidden]``), in the order they fill the ``<|image|>`` positions; ``last_hidden_state`` the CLIP hidden state
        they come from, over the real crops of all images in turn; ``hidden_states`` / ``attentions`` CLIP's, when asked (or set in the config)."""
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        return self.vision_embed_tokens(pixel_values, image_sizes, output_hidden_states, output_attentions)

    def image_mask(self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """``[batch, seq]``: True at the image positions, read from the ids, or from the embeddings when only those
        were given (positions holding the ``<|image|>`` embedding)."""
        if input_ids is not None:
            return input_ids == self.config.image_token_id
        token = torch.tensor(self.config.image_token_id, device=inputs_embeds.device)
        return (inputs_embeds == self.embed_tokens(token)).all(-1)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> Phi3VModelOutputWithPast:
        if input_ids is not None:  # negative ids: the image positions of the processor before 0.2
            input_ids = input_ids.masked_fill(input_ids < 0, self.config.image_token_id)
        if inputs_embeds is None and input_ids is not None:
            inputs_embeds = self.embed_tokens(input_ids)
        # Without pixels (decode steps, or an assistant model drafting) the image positions keep the <|image|>
        # embedding, as in transformers' own VLMs.
        image_outputs = None
        if pixel_values is not None:
            if image_sizes is None:
                raise ValueError("pixel_values were given without image_sizes; pass the processor's full output.")
            image_outputs = self.get_image_features(
                pixel_values,
                image_sizes,
                output_hidden_states=kwargs.get("output_hidden_states"),
                output_attentions=kwargs.get("output_attentions"),
                return_dict=True,
            )
            features = torch.cat(image_outputs.pooler_output)
            mask = self.image_mask(input_ids, inputs_embeds)
            check_image_positions(mask, features.shape[0])
            inputs_embeds = inputs_embeds.masked_scatter(mask.unsqueeze(-1), features.to(inputs_embeds.dtype))
        outputs = super().forward(input_ids=None, inputs_embeds=inputs_embeds, return_dict=True, **kwargs)
        return Phi3VModelOutputWithPast(**outputs, image_outputs=image_outputs)


class Phi3VForCausalLM(Phi3VPreTrainedModel, Phi3ForCausalLM, GenerationMixin):  # a generator by its own bases
    def __init__(self, config: Phi3VConfig):
        # Skip Phi3ForCausalLM.__init__: it would build (and allocate) a text-only Phi3Model first.
        super(Phi3ForCausalLM, self).__init__(config)
        self.model = Phi3VModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_image_features(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor, **kwargs):
        """See ``Phi3VModel.get_image_features``."""
        return self.model.get_image_features(pixel_values, image_sizes, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> Phi3VCausalLMOutputWithPast:
        # Image positions are never targets, whoever copied the ids into the labels (TRL's language-modelling
        # collator does): neither the <|image|> token nor an older caller's negative ids.
        if labels is not None:
            labels = labels.masked_fill((labels == self.config.image_token_id) | (labels < 0), -100)
        # The cache and every other argument pass through by whatever name this transformers version uses.
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            image_sizes=image_sizes,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(outputs.last_hidden_state[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        rest = {name: value for name, value in outputs.items() if name != "last_hidden_state"}
        return Phi3VCausalLMOutputWithPast(loss=loss, logits=logits, **rest)
