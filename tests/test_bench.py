"""The benchmark's baselines compute the same things as the fast paths they are compared with."""

import torch

from phi3v_recipe.bench import naive_process, padded_share
from phi3v_recipe.phi3_v import Phi3VImageProcessor

from .test_processor import photo


def test_per_crop_baseline_computes_the_same_pixels():
    for size, num_crops in [((1000, 750), 4), ((750, 1000), 16), ((600, 200), 4)]:
        image = photo(*size)
        processor = Phi3VImageProcessor(num_crops=num_crops)
        ours = processor(image)["pixel_values"][0]
        naive = naive_process(image, num_crops, processor.image_mean, processor.image_std)
        torch.testing.assert_close(naive, ours, atol=1e-5, rtol=0)


def test_padded_share():
    lengths = [10, 10, 5, 15]
    assert padded_share(lengths, [[0, 1], [2, 3]]) == 1 - 40 / (20 + 30)
    assert padded_share(lengths, [[0, 1], [2, 3]], pad_to=20) == 1 - 40 / 80
    assert padded_share(lengths, [[2, 0], [1, 3]]) == 1 - 40 / (20 + 30)


def test_useful_flops_count_decoder_head_and_the_vision_layers_that_run(tiny_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from phi3v_recipe.bench import useful_flops
    from phi3v_recipe.train import LANGUAGE_MODEL_LORA_TARGETS

    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    c, v = base.config, base.config.vocab_size
    h, i, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    n_decoder = layers * (h * 3 * h + h * h + h * 2 * i + i * h + 2 * h)  # qkv, o, gate_up, down, two norms
    clip = base.model.vision_embed_tokens.img_processor.vision_model
    n_clip_layer = sum(p.numel() for p in clip.encoder.layers[0].parameters())
    n_stem = sum(p.numel() for n, p in clip.named_parameters() if not n.startswith(("encoder.", "post_layernorm")))
    n_vision = n_stem + (len(clip.encoder.layers) - 1) * n_clip_layer  # hidden state -2: the last layer never runs
    model = get_peft_model(base, LoraConfig(r=4, target_modules=LANGUAGE_MODEL_LORA_TARGETS))

    flops = useful_flops(model, tokens=1000, answer_tokens=30, crops=7)
    assert flops == 4 * n_decoder * 1000 + 4 * v * h * 30 + 2 * n_vision * 577 * 7
