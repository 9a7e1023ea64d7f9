import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoProcessor

from phi3v_recipe import Phi3VForCausalLM

from . import reference
from .test_processor import photo

PROMPT_1 = "<|user|>\n<|image_1|>\nWhat is shown in this image?<|end|>\n<|assistant|>\n"
PROMPT_2 = "<|user|>\n<|image_1|>\n<|image_2|>\nCompare the images.<|end|>\n<|assistant|>\n"


@pytest.fixture(scope="module")
def processor(tiny_dir):
    return AutoProcessor.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def model(tiny_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def two_samples(processor):
    """Two prompts with different crop and image counts (1 landscape image; 1 portrait + 1 tiny image)."""
    return [
        processor(PROMPT_1, [photo(1000, 750)], return_tensors="pt"),
        processor(PROMPT_2, [photo(300, 900, seed=1), photo(5, 5, seed=2)], return_tensors="pt"),
    ]


def test_logits_match_reference(model, tiny_state_dict, tiny_config_dict, two_samples):
    for inputs in two_samples:
        with torch.no_grad():
            ours = model(**inputs).logits
        assert (inputs["input_ids"] >= 0).all()  # in-vocabulary ids: the reference's, negatives made <|image|>
        ref_ids = reference.reference_ids(inputs["input_ids"])
        assert ((ref_ids < 0) == (inputs["input_ids"] == 32044)).all()
        ref = reference.logits(tiny_state_dict, tiny_config_dict, **{**inputs, "input_ids": ref_ids})
        torch.testing.assert_close(ours, ref, atol=1e-3, rtol=0)
        assert ours.abs().max() > 0.1  # not vacuous: the logits carry signal


def test_image_features_change_logits(model, processor):
    a = processor(PROMPT_1, [photo(1000, 750, seed=3)], return_tensors="pt")
    b = processor(PROMPT_1, [photo(1000, 750, seed=4)], return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(model(**a).logits[0, -1], model(**b).logits[0, -1])


def test_only_real_crops_reach_the_vision_tower(model, two_samples):
    inputs = dict(two_samples[1])  # 300x900 -> a 3x1 grid (one padding slot), 5x5 -> a 2x2 grid (none)
    grids = (inputs["image_sizes"] // 336).prod(-1).tolist()
    assert grids == [3, 4]
    seen = []
    hook = model.model.vision_embed_tokens.img_processor.vision_model.embeddings.register_forward_hook(
        lambda module, args, out: seen.append(args[0].shape[0])
    )
    try:
        with torch.no_grad():
            clean = model(**inputs).logits
            noisy_pixels = inputs["pixel_values"].clone()
            noisy_pixels[0, 1 + 3 :] = torch.randn_like(noisy_pixels[0, 1 + 3 :]) * 5  # fill the padding slot
            noisy = model(**{**inputs, "pixel_values": noisy_pixels}).logits
    finally:
        hook.remove()
    assert seen == [(1 + 3) + (1 + 4)] * 2  # of 2 x (num_crops + 1) = 10 slots, only the 9 real crops
    torch.testing.assert_close(clean, noisy, atol=0, rtol=0)


def test_sdpa_matches_eager(tiny_dir, model, two_samples):
    # config.json asks for flash_attention_2 (not installed): the default applies, unless one is asked for.
    assert model.config._attn_implementation == model.config.vision_config._attn_implementation == "eager"
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    assert sdpa.config._attn_implementation == sdpa.config.vision_config._attn_implementation == "sdpa"
    with torch.no_grad():
        for inputs in two_samples:
            torch.testing.assert_close(sdpa(**inputs).logits, model(**inputs).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_equals_samples_alone(processor, model, side):
    texts = [PROMPT_1, PROMPT_2]
    images = [[photo(1000, 750)], [photo(300, 900, seed=1), photo(5, 5, seed=2)]]
    batch = processor(texts, images, padding_side=side, return_tensors="pt")
    # Positions count real tokens only (as generate() does), so left padding does not shift them.
    position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batched = model(**batch, position_ids=position_ids).logits
        for row, (text, imgs) in enumerate(zip(texts, images)):
            alone = model(**processor(text, imgs, return_tensors="pt")).logits[0]
            mask = batch["attention_mask"][row].bool()
            torch.testing.assert_close(batched[row][mask], alone, atol=1e-4, rtol=1e-4)


def test_backward_reaches_language_and_vision(tiny_dir, two_samples):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).train()
    inputs = two_samples[1]
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == 32044, -100)
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in [
        "model.layers.0.self_attn.qkv_proj.weight",
        "model.vision_embed_tokens.img_projection.0.weight",
        "model.vision_embed_tokens.sub_GN",
        "model.vision_embed_tokens.glb_GN",
        "model.vision_embed_tokens.img_processor.vision_model.encoder.layers.0.mlp.fc1.weight",
    ]:
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    # Layer index -2 is the last one used: the final CLIP layer and post_layernorm get no gradient.
    assert grads["model.vision_embed_tokens.img_processor.vision_model.encoder.layers.2.mlp.fc1.weight"] is None
    # padding_idx: the <|endoftext|> row of the embedding never gets a gradient.
    assert grads["model.embed_tokens.weight"][32000].abs().sum() == 0


def test_gradient_checkpointing_gives_same_gradients(tiny_dir, two_samples):
    inputs = two_samples[0]
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == 32044, -100)
    grads = []
    for checkpointing in [False, True]:
        model = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="eager").train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model(**inputs, labels=labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4)


def test_backbone_serves_the_fused_loss_path(model, two_samples):
    """TRL's fused LM head runs `model.base_model(**inputs)` and projects `last_hidden_state` itself."""
    inputs = two_samples[0]
    with torch.no_grad():
        hidden = model.base_model(**inputs).last_hidden_state
        logits = model(**inputs).logits
    torch.testing.assert_close(model.lm_head(hidden), logits)


def test_greedy_generate_with_cache_equals_stepwise_argmax(model, processor, two_samples):
    inputs = two_samples[1]
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=None)
    new = out[0, inputs["input_ids"].shape[1] :]

    ids = inputs["input_ids"]
    expected = []
    with torch.no_grad():
        for _ in range(6):
            logits = model(
                input_ids=ids, pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"]
            ).logits
            nxt = logits[0, -1].argmax()
            expected.append(int(nxt))
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    assert new.tolist() == expected


def test_sampling_generate_and_batched_generate(model, processor):
    torch.manual_seed(0)
    batch = processor(
        [PROMPT_1, PROMPT_2],
        [[photo(1000, 750)], [photo(300, 900, seed=1), photo(5, 5, seed=2)]],
        padding_side="left",
        return_tensors="pt",
    )
    out = model.generate(**batch, max_new_tokens=4, do_sample=True, top_k=50, eos_token_id=None)
    assert out.shape == (2, batch["input_ids"].shape[1] + 4)
    greedy = model.generate(**batch, max_new_tokens=3, do_sample=False, eos_token_id=None)
    for row, (text, imgs) in enumerate(
        [(PROMPT_1, [photo(1000, 750)]), (PROMPT_2, [photo(300, 900, seed=1), photo(5, 5, seed=2)])]
    ):
        alone = model.generate(
            **processor(text, imgs, return_tensors="pt"), max_new_tokens=3, do_sample=False, eos_token_id=None
        )
        assert greedy[row, -3:].tolist() == alone[0, -3:].tolist()


@pytest.mark.parametrize("shard", ["5GB", "2MB"])
def test_save_and_reload_keep_hub_layout(tiny_dir, model, two_samples, tmp_path, shard):
    model.save_pretrained(tmp_path, max_shard_size=shard)
    files = sorted(tmp_path.glob("*.safetensors"))
    assert (len(files) > 1) == (shard == "2MB")
    keys = set()
    for file in files:
        with safe_open(file, "pt") as f:
            keys |= set(f.keys())
    with safe_open(tiny_dir / "model.safetensors", "pt") as f:
        assert keys == set(f.keys())
    assert not any(".wte." in k for k in keys)
    reloaded = Phi3VForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**two_samples[1]).logits, model(**two_samples[1]).logits, atol=0, rtol=0)


def test_tiny_checkpoint_files_are_in_hub_format(tiny_dir, tiny_config_dict):
    names = {p.name for p in tiny_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
    } <= names
    assert tiny_config_dict["rope_scaling"]["type"] == "su"
    assert tiny_config_dict["_attn_implementation"] == "flash_attention_2"
    assert "pad_token_id" not in tiny_config_dict
