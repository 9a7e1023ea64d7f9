import json
import math

import pytest
import torch
from transformers import AutoConfig

from phi3v_recipe import Phi3VConfig, Phi3VForCausalLM

from .conftest import HUB_MODELS


@pytest.mark.parametrize("name", HUB_MODELS)
def test_hub_config_loads_unchanged(shared, name):
    raw = json.loads((shared / "hub" / name / "config.json").read_text())
    assert raw["rope_scaling"]["type"] == "su" and raw["_attn_implementation"] == "flash_attention_2"

    config = AutoConfig.from_pretrained(shared / "hub" / name)

    assert isinstance(config, Phi3VConfig)
    assert config.rope_parameters["rope_type"] == "longrope"
    assert config.rope_parameters["long_factor"] == raw["rope_scaling"]["long_factor"]
    assert config.rope_parameters["short_factor"] == raw["rope_scaling"]["short_factor"]
    assert config.rope_parameters["original_max_position_embeddings"] == 4096
    assert config.pad_token_id == 32000  # absent from the Phi-3 file: the class default
    assert config._attn_implementation != "flash_attention_2"  # flash-attn is not installed here
    assert config.vision_feature_layer == -2
    vision = config.vision_config  # absent from the file: CLIP ViT-L/14-336
    assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size, vision.patch_size) == (1024, 24, 336, 14)
    assert vision.hidden_act == "quick_gelu"


def test_longrope_attention_factor(shared):
    config = AutoConfig.from_pretrained(shared / "hub" / HUB_MODELS[0])
    with torch.device("meta"):
        model = Phi3VForCausalLM(config)
    expected = math.sqrt(1 + math.log(131072 / 4096) / math.log(4096))
    assert model.model.rotary_emb.attention_scaling == pytest.approx(expected)
    assert expected == pytest.approx(1.1902380714)


def test_full_size_weight_names_and_shapes(shared):
    fixture = json.loads((shared / "fixtures" / "state_dict_shapes.json").read_text())
    config = AutoConfig.from_pretrained(shared / "hub" / HUB_MODELS[0])
    with torch.device("meta"):
        model = Phi3VForCausalLM(config)

    shapes = {name: list(t.shape) for name, t in model.state_dict().items()}

    assert shapes == fixture["shapes"]
    assert len(shapes) == fixture["num_tensors"] == 592
    assert sum(p.numel() for p in model.parameters()) == fixture["total_params"]
    # The image embedding shares embed_tokens: one module, no second key.
    assert model.model.embed_tokens.padding_idx == 32000


def test_unsupported_layout_is_refused():
    with pytest.raises(ValueError, match="hd_transform_order"):
        Phi3VConfig(embd_layer={"hd_transform_order": "glb_sub"})
