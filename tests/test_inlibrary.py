"""Phi-3-Vision behaves like a VLM inside transformers: image positions are the in-vocabulary <|image|> token, so
every generate feature, TRL's generic paths and transformers' processor conventions work on it."""

import json
import logging
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import transformers
from transformers import AutoImageProcessor, AutoModelForCausalLM, AutoProcessor, StaticCache

from phi3v_recipe import Phi3VForCausalLM

from .test_predict import put_in_hub_cache
from .test_processor import photo

PROMPT = "<|user|>\n<|image_1|>\nWhat is shown in this image?<|end|>\n<|assistant|>\n"
IMAGE_TOKEN_ID = 32044


@pytest.fixture(scope="module")
def processor(tiny_dir):
    return AutoProcessor.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def model(tiny_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_dir).eval()


@pytest.fixture(scope="module")
def inputs(processor):
    return processor(PROMPT, [photo(400, 300)], return_tensors="pt")


def greedy(model, inputs, **kwargs):
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False, eos_token_id=None, **kwargs)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def test_image_positions_are_the_image_token_everywhere(tiny_dir, processor, model, inputs):
    assert processor.image_token == "<|image|>" and processor.image_token_id == IMAGE_TOKEN_ID
    assert model.config.image_token_id == IMAGE_TOKEN_ID
    ids = inputs["input_ids"][0]
    assert (ids >= 0).all() and (ids < model.config.vocab_size).all()
    assert (ids == IMAGE_TOKEN_ID).sum() == processor.num_image_tokens(400, 300)


def test_negative_ids_of_older_callers_give_the_same_logits(model, inputs):
    old = inputs["input_ids"].masked_fill(inputs["input_ids"] == IMAGE_TOKEN_ID, -1)
    with torch.no_grad():
        torch.testing.assert_close(model(**{**inputs, "input_ids": old}).logits, model(**inputs).logits)


@pytest.mark.parametrize(
    "option",
    [
        {"repetition_penalty": 1.1},
        {"no_repeat_ngram_size": 2},
        {"bad_words_ids": [[5]]},
        {"sequence_bias": {(5,): -1.0}},
    ],
)
def test_logits_processors_that_read_the_prompt_ids(model, inputs, option):
    """repetition_penalty gathers the scores at every prompt id: an image position used to be index -1."""
    new = greedy(model, inputs, **option)
    assert len(new) == 5


def test_repetition_penalty_changes_what_repeats(model, inputs):
    plain = greedy(model, inputs)
    assert len(set(plain)) < len(plain)  # the tiny model repeats itself; a strong penalty must change that
    assert greedy(model, inputs, repetition_penalty=100.0) != plain


def test_assisted_decoding_with_an_image_prompt(model, inputs):
    """transformers drops pixel_values from the assistant's prefill: the assistant drafts without the image (its
    positions keep the <|image|> embedding) and the main model's check keeps the greedy answer exact."""
    assert greedy(model, inputs, assistant_model=model) == greedy(model, inputs)


def test_inputs_embeds_with_pixels_use_the_pixels(model, inputs):
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    rest = {key: inputs[key] for key in ("pixel_values", "image_sizes", "attention_mask")}
    with torch.no_grad():
        by_ids = model(**inputs).logits
        by_embeds = model(inputs_embeds=embeds, **rest).logits
        other = model(inputs_embeds=embeds, **{**rest, "pixel_values": torch.randn_like(inputs["pixel_values"])})
    torch.testing.assert_close(by_embeds, by_ids)
    assert not torch.allclose(other.logits, by_ids)  # the pixels are read, not ignored


def test_get_image_features_are_what_fills_the_image_positions(model, inputs):
    """As transformers' VLMs give them: the image encoder's output, one projected feature block per image in
    ``pooler_output`` (what fills the <|image|> positions), also returned by the forward as ``image_outputs``."""
    with torch.no_grad():
        image_outputs = model.get_image_features(inputs["pixel_values"], inputs["image_sizes"])
        features = torch.cat(image_outputs.pooler_output)
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        embeds[inputs["input_ids"] == IMAGE_TOKEN_ID] = features
        outputs = model(**inputs)
        torch.testing.assert_close(model(inputs_embeds=embeds).logits, outputs.logits)
    assert features.shape == ((inputs["input_ids"] == IMAGE_TOKEN_ID).sum(), model.config.hidden_size)
    assert len(image_outputs.pooler_output) == len(inputs["pixel_values"])
    torch.testing.assert_close(torch.cat(outputs.image_outputs.pooler_output), features)


def test_image_features_last_hidden_state_is_clips_state_of_the_real_crops_only(model, processor):
    """``last_hidden_state`` is the CLIP state the features come from, over the real crops of each image in turn (as
    LLaVA-NeXT packs its crops), so no zero-padded ``[images, crops+1, ...]`` copy is built on every forward."""
    wide = processor(PROMPT, [photo(500, 200)], return_tensors="pt")  # 1 global view + 1x2 sub-crops of 5 slots
    assert wide["image_sizes"].tolist() == [[336, 672]] and wide["pixel_values"].shape[1] == 5
    vision = model.model.vision_embed_tokens.img_processor.vision_model
    with torch.no_grad():
        state = model.get_image_features(wide["pixel_values"], wide["image_sizes"]).last_hidden_state
        direct = vision(wide["pixel_values"][0, :3], model.config.vision_feature_layer)[0]
    assert state.shape == (3, 577, model.config.vision_config.hidden_size)
    torch.testing.assert_close(state, direct)


def test_image_features_give_clips_hidden_states_and_attentions_when_asked_and_a_tuple_without_return_dict(
    model, inputs
):
    pixels = {"pixel_values": inputs["pixel_values"], "image_sizes": inputs["image_sizes"]}
    layers = model.config.vision_config.num_hidden_layers
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")  # attention maps exist under eager attention only
    try:
        with torch.no_grad():
            plain = model.get_image_features(**pixels)
            everything = model.get_image_features(**pixels, output_hidden_states=True, output_attentions=True)
            as_tuple = model.get_image_features(**pixels, return_dict=False)
            outputs = model(**inputs, output_hidden_states=True, output_attentions=True)
    finally:
        model.set_attn_implementation(before)
    assert plain.hidden_states is None and plain.attentions is None
    assert len(everything.hidden_states) == layers + 1 and len(everything.attentions) == layers
    assert all(attention is not None for attention in everything.attentions)
    for a, b in zip(plain.pooler_output, everything.pooler_output):  # asking for more changes no feature
        torch.testing.assert_close(a, b)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], plain.last_hidden_state)
    assert len(outputs.image_outputs.hidden_states) == layers + 1
    assert len(outputs.hidden_states) == model.config.num_hidden_layers + 1


def test_a_mismatch_between_ids_and_pixels_is_one_clear_error(model, processor, inputs):
    two = processor(PROMPT, [photo(900, 300)], return_tensors="pt")
    with pytest.raises(ValueError, match="image positions but the images give"):
        model(input_ids=inputs["input_ids"], pixel_values=two["pixel_values"], image_sizes=two["image_sizes"])


def test_the_decode_step_compiles_without_graph_breaks(model, inputs):
    assert model._can_compile_fullgraph
    length = inputs["input_ids"].shape[1]
    cache = StaticCache(config=model.config, max_cache_len=length + 2)
    with torch.no_grad():
        prefill = model(**inputs, use_cache=True, **{cache_argument(): cache})
        token = prefill.logits[:, -1:].argmax(-1)
        step = torch.compile(model.forward, fullgraph=True, backend="eager")  # fullgraph: a graph break raises
        out = step(input_ids=token, position_ids=torch.tensor([[length]]), use_cache=True, **{cache_argument(): cache})
    assert out.logits.shape == (1, 1, model.config.vocab_size)


def cache_argument() -> str:
    """The name this transformers version gives the cache argument of a forward (5.24 renamed it)."""
    import inspect

    return (
        "cache" if "cache" in inspect.signature(transformers.Phi3ForCausalLM.forward).parameters else "past_key_values"
    )


def test_forward_and_generate_are_silent(model, inputs):
    """No deprecated transformers API: not one warning from transformers or Python in a forward and a generate."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.no_grad():
                model(**inputs)
            greedy(model, inputs)
    finally:
        logger.removeHandler(handler)
    messages = [r.getMessage() for r in records if r.levelno >= logging.WARNING] + [str(w.message) for w in caught]
    assert messages == []


# ---- the processor's conventions ----


def test_processor_kwargs_by_group_and_flat_agree(processor):
    image = photo(1000, 750)
    flat = processor(PROMPT, [image], num_crops=16, padding_side="right", return_tensors="pt")
    grouped = processor(
        PROMPT,
        [image],
        images_kwargs={"num_crops": 16},
        text_kwargs={"padding_side": "right"},
        common_kwargs={"return_tensors": "pt"},
    )
    assert flat["pixel_values"].shape[1] == grouped["pixel_values"].shape[1] == 17
    assert torch.equal(flat["input_ids"], grouped["input_ids"])
    assert (grouped["input_ids"] == IMAGE_TOKEN_ID).sum() == processor.num_image_tokens(1000, 750, 16)
    assert processor.image_processor.num_crops == 4  # a per-call setting changes nothing for the next call
    assert processor(PROMPT, [image], return_tensors="pt")["pixel_values"].shape[1] == 5


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"num_crop": 16}, "num_crop"),
        ({"images_kwargs": {"crop_size": 336}}, "crop_size"),
        ({"text_kwargs": {"stride": 2}}, "stride"),
        ({"common_kwargs": {"padding": True}}, "padding"),
    ],
)
def test_processor_refuses_what_it_would_ignore(processor, kwargs, named):
    with pytest.raises(TypeError, match=named):
        processor(PROMPT, [photo(400, 300)], **kwargs)


def test_processor_takes_the_standard_rescale_and_normalize_settings(processor, tiny_dir):
    """transformers' image settings: unnormalised pixels are the scaled ones before (x - mean) / std; unscaled ones
    are 255 times those; float images are already scaled, so do_rescale never scales them twice; a processor built
    with a setting keeps it (and saves it)."""
    from phi3v_recipe.phi3_v import Phi3VImageProcessor

    image = photo(500, 300)
    normal = processor(PROMPT, [image], return_tensors="pt")["pixel_values"]
    scaled = processor(PROMPT, [image], do_normalize=False, return_tensors="pt")["pixel_values"]
    raw = processor(PROMPT, [image], images_kwargs={"do_rescale": False, "do_normalize": False})["pixel_values"]
    mean = torch.tensor(processor.image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_processor.image_std).view(3, 1, 1)
    real = normal[0, 1]  # the first crop (the global view is resampled after normalising)
    torch.testing.assert_close(real, (scaled[0, 1] - mean) / std)
    torch.testing.assert_close(raw[0, 1], scaled[0, 1] * 255, rtol=1e-5, atol=1e-4)
    floats = np.array(image).astype(np.float32) / 255
    for do_rescale in (True, False):
        again = processor(PROMPT, [floats], do_rescale=do_rescale, return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(again, normal, atol=1e-5, rtol=0)
    built = Phi3VImageProcessor(num_crops=processor.image_processor.num_crops, do_normalize=False)
    torch.testing.assert_close(built(image)["pixel_values"][0, 1], scaled[0, 1])
    assert built.to_dict()["do_normalize"] is False


def test_image_processor_reads_the_channel_layout_and_keeps_other_channels_without_rgb_conversion(tiny_dir, processor):
    from phi3v_recipe.phi3_v import Phi3VImageProcessor

    image_processor = Phi3VImageProcessor.from_pretrained(tiny_dir)
    hwc = np.array(photo(500, 300))
    expected = image_processor(hwc)["pixel_values"]
    chw = image_processor(hwc.transpose(2, 0, 1).copy(), input_data_format="channels_first")["pixel_values"]
    torch.testing.assert_close(chw, expected)
    rgba = np.concatenate([hwc, np.full((*hwc.shape[:2], 1), 255, dtype=np.uint8)], axis=-1)
    four = {"input_data_format": "channels_last"}  # 4 channels are not inferred (nor in transformers)
    assert image_processor(rgba, **four)["pixel_values"].shape[2] == 3  # made RGB, as the model reads it
    kept = image_processor(rgba, do_convert_rgb=False, image_mean=[0.5] * 4, image_std=[0.5] * 4, **four)
    kept = kept["pixel_values"]
    via_processor = processor(PROMPT, [rgba], return_tensors="pt", **four)  # the image's size read the same way
    assert torch.equal(via_processor["input_ids"], processor(PROMPT, [hwc], return_tensors="pt")["input_ids"])
    assert kept.shape[2] == 4


def test_processor_takes_the_video_and_audio_keys_generic_callers_pass_and_refuses_videos(processor):
    """apply_chat_template passes transformers' video-loading keys to every processor: with no video they do
    nothing here. Videos and audio themselves are refused with the way to give frames."""
    messages = [
        {"role": "user", "content": [{"type": "image", "image": photo(400, 300)}, {"type": "text", "text": "Hi"}]}
    ]
    plain = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    with_keys = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, processor_kwargs={"num_frames": 2}
    )
    assert plain["input_ids"] == with_keys["input_ids"]
    with pytest.raises(ValueError, match="list of frames"):
        processor(PROMPT, [photo(400, 300)], videos=[np.zeros((2, 32, 32, 3), dtype=np.uint8)])


def test_image_processor_refuses_a_misspelt_setting(tiny_dir):
    from phi3v_recipe.phi3_v import Phi3VImageProcessor

    with pytest.raises(TypeError, match="num_crop;"):
        Phi3VImageProcessor(num_crop=16)
    saved = Phi3VImageProcessor.from_pretrained(tiny_dir)  # the file's own keys (auto_map, types) still load
    assert saved.num_crops == 4
    # Through from_pretrained, transformers passes on only the settings a processor already has: a misspelt one
    # would load the file's 4 crops without a word.
    for auto in (AutoProcessor, AutoImageProcessor):
        with pytest.raises(TypeError, match="num_crop: did you mean num_crops"):
            auto.from_pretrained(tiny_dir, num_crop=16)
    loaded = AutoProcessor.from_pretrained(tiny_dir, num_crops=16, revision=None, local_files_only=True)
    assert loaded.image_processor.num_crops == 16


def test_offsets_are_in_the_expanded_text_and_replacement_offsets_say_where_each_image_went(processor):
    """As transformers' processors give them: text_replacement_offsets says where each placeholder (a tag, or
    <|image|>) went in the expanded text, and the offset mapping is in that text: each <|image|> id covers one
    <|image|> of its image's run, and the tokens cover every character. Both placeholder kinds give the same."""
    images = [photo(400, 300), photo(500, 200)]
    tagged = "<|user|>\n<|image_1|>\nWhat?<|end|>\n<|assistant|>\nA <|image_2|> b"
    results = []
    for text in (tagged, tagged.replace("<|image_1|>", "<|image|>").replace("<|image_2|>", "<|image|>")):
        out = processor(text, images, return_offsets_mapping=True, return_text_replacement_offsets=True)
        records, ids, offsets = out["text_replacement_offsets"][0], out["input_ids"][0], out["offset_mapping"][0]
        expanded = text
        for record in reversed(records):
            expanded = expanded[: record["span"][0]] + record["replacement"] + expanded[record["span"][1] :]
        assert [r["text"] for r in records] == [text[slice(*r["span"])] for r in records] and len(records) == 2
        assert all(expanded[slice(*r["new_span"])] == r["replacement"] for r in records)
        runs = [len(r["replacement"]) // len("<|image|>") for r in records]
        assert runs == [processor.num_image_tokens(*image.size) for image in images]
        image_spans = [span for i, span in zip(ids, offsets) if i == IMAGE_TOKEN_ID]
        assert len(image_spans) == sum(runs) and all(expanded[a:b] == "<|image|>" for a, b in image_spans)
        assert {c for a, b in offsets for c in range(a, b)} == set(range(len(expanded)))
        results.append((ids, offsets, [r["new_span"] for r in records]))
    assert results[0] == results[1]


def test_image_processor_backends_as_transformers_picks_them_and_one_saved_file(tiny_dir, tmp_path):
    """transformers' two backend slots: the PIL one (its choice where torchvision is not installed) and the tensor
    one (asked for, or its choice wherever torchvision is installed), which takes ``device`` through the processor. Both give the same ids and pixels and save the same file."""
    from phi3v_recipe.phi3_v import Phi3VImageProcessor, Phi3VImageProcessorPil

    default = AutoProcessor.from_pretrained(tiny_dir)
    tensors = AutoProcessor.from_pretrained(tiny_dir, backend="torchvision")
    picked = Phi3VImageProcessor if transformers.utils.is_torchvision_available() else Phi3VImageProcessorPil
    assert type(default.image_processor) is picked
    assert type(tensors.image_processor) is Phi3VImageProcessor
    assert type(AutoImageProcessor.from_pretrained(tiny_dir, backend="pil")) is Phi3VImageProcessorPil
    expected = default(PROMPT, [photo(400, 300)], return_tensors="pt")
    for kwargs in ({"device": "cpu"}, {"images_kwargs": {"device": "cpu"}}, {}):
        out = tensors(PROMPT, [photo(400, 300)], return_tensors="pt", **kwargs)
        assert all(torch.equal(out[key], expected[key]) for key in expected)
    default.image_processor.save_pretrained(tmp_path / "pil")
    tensors.image_processor.save_pretrained(tmp_path / "tensors")
    saved = [json.loads((tmp_path / name / "preprocessor_config.json").read_text()) for name in ("pil", "tensors")]
    assert saved[0] == saved[1] and saved[0]["image_processor_type"] == "Phi3VImageProcessor"
    with pytest.raises(TypeError, match='backend="torchvision"'):
        AutoProcessor.from_pretrained(tiny_dir, backend="pil")(PROMPT, [photo(400, 300)], device="cpu")


def test_an_attribute_set_on_an_image_processor_comes_back_from_its_saved_file(tiny_dir, tmp_path):
    """to_dict saves every attribute, so one set on an instance comes back from the saved file, as with
    transformers' image processors (its processor mixin's test_args_overlap_kwargs); a saved key that is nearly a
    setting is still refused by name, and so is an unknown keyword in code."""
    from phi3v_recipe.families.phi4mm_images import Phi4MMImageProcessor
    from phi3v_recipe.phi3_v import Phi3VImageProcessor

    processor = AutoProcessor.from_pretrained(tiny_dir)
    processor.image_processor.is_override = True
    processor.save_pretrained(tmp_path / "saved")
    for loaded in (
        AutoProcessor.from_pretrained(tmp_path / "saved").image_processor,
        AutoImageProcessor.from_pretrained(tmp_path / "saved"),
    ):
        assert loaded.is_override is True and loaded.num_crops == 4
    config = tmp_path / "saved" / "processor_config.json"
    saved = json.loads(config.read_text())
    saved["image_processor"]["num_crop"] = 16  # hand-edited
    config.write_text(json.dumps(saved))
    with pytest.raises(TypeError, match="the saved file's key num_crop: did you mean num_crops"):
        AutoProcessor.from_pretrained(tmp_path / "saved")
    with pytest.raises(TypeError, match="does not take is_override"):
        Phi3VImageProcessor(is_override=True)

    phi4 = Phi4MMImageProcessor(dynamic_hd=4)
    phi4.is_override = True
    phi4.save_pretrained(tmp_path / "phi4")
    loaded = Phi4MMImageProcessor.from_pretrained(tmp_path / "phi4")
    assert loaded.is_override is True and loaded.dynamic_hd == 4


@pytest.mark.parametrize(
    "convert",
    [
        lambda a: a,  # uint8 HWC
        lambda a: a.astype(np.float32) / 255,  # floats in [0, 1]
        lambda a: torch.from_numpy(a).permute(2, 0, 1),  # a CHW uint8 tensor
    ],
)
def test_numpy_and_torch_images_give_the_pil_pixels(processor, convert):
    image = photo(500, 300)
    expected = processor(PROMPT, [image], return_tensors="pt")
    got = processor(PROMPT, [convert(np.array(image))], return_tensors="pt")
    torch.testing.assert_close(got["pixel_values"], expected["pixel_values"], atol=1e-5, rtol=0)
    assert torch.equal(got["input_ids"], expected["input_ids"])


def test_num_multimodal_tokens_match_the_processed_images(processor):
    sizes = [(750, 1000), (900, 300)]  # (height, width)
    data = processor._get_num_multimodal_tokens(image_sizes=sizes)
    for (height, width), tokens, patches in zip(sizes, data.num_image_tokens, data.num_image_patches):
        out = processor(PROMPT, [photo(width, height)], return_tensors="pt")
        assert tokens == (out["input_ids"] == IMAGE_TOKEN_ID).sum()
        assert patches == int((out["image_sizes"][0] // 336).prod()) + 1
    more = processor._get_num_multimodal_tokens(image_sizes=sizes, images_kwargs={"num_crops": 16})
    assert more.num_image_tokens[0] > data.num_image_tokens[0]


def test_image_token_placeholders_work_as_numbered_tags_and_never_mix_with_them(processor):
    """``processor.image_token`` in the text, one per image, as transformers' VLM processors take it: the same ids as
    the hub's numbered tags. Placeholders that do not match the images, or both kinds in one text, are an error."""
    images = [photo(400, 300), photo(300, 500)]
    tagged = processor("<|user|>\n<|image_1|>\n<|image_2|>\nhi<|end|>\n", images, return_tensors="pt")
    plain = processor("<|user|>\n<|image|>\n<|image|>\nhi<|end|>\n", images, return_tensors="pt")
    assert torch.equal(tagged["input_ids"], plain["input_ids"])
    assert torch.equal(tagged["pixel_values"], plain["pixel_values"])
    with pytest.raises(ValueError, match="found no image tags|0 <\\|image_N\\|>|do not match"):
        processor("<|user|>\n<|image|> hi<|end|>\n", [])
    with pytest.raises(ValueError, match="mixes"):
        processor("<|user|>\n<|image|><|image_2|> hi<|end|>\n", images)


# ---- TRL given a path or a hub id ----


def trl_model_from(model_id: str):
    from trl.trainer.utils import create_model_from_path

    return create_model_from_path(model_id)


def test_trl_loads_ours_from_a_folder_a_hub_config_and_the_hub_cache(tiny_dir, tmp_path, monkeypatch):
    """TRL takes a class from transformers by the `architectures` name, else the remote code of `auto_map`: ours must
    come back for a folder of ours, a folder that carries the hub's `auto_map` (as a merged model does), and a hub id
    from the local cache."""
    with_auto_map = tmp_path / "with_auto_map"
    shutil.copytree(tiny_dir, with_auto_map)
    config = json.loads((with_auto_map / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_phi3_v.Phi3VConfig",
        "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM",
    }
    (with_auto_map / "config.json").write_text(json.dumps(config))
    assert type(trl_model_from(str(tiny_dir))) is Phi3VForCausalLM
    assert type(trl_model_from(str(with_auto_map))) is Phi3VForCausalLM

    cache = tmp_path / "hub"
    put_in_hub_cache(cache, "microsoft/Phi-3-vision-128k-instruct", with_auto_map, "a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    assert type(trl_model_from("microsoft/Phi-3-vision-128k-instruct")) is Phi3VForCausalLM


def test_trl_sft_trainer_given_a_path(tiny_dir, tmp_path):
    """`SFTTrainer(model="path")` as `trl sft` builds it, in a fresh process that imports phi3v_recipe first."""
    script = f"""
import phi3v_recipe
from datasets import Dataset
from trl import SFTConfig, SFTTrainer
rows = [{{"messages": [{{"role": "user", "content": "Hi"}}, {{"role": "assistant", "content": "Bag"}}]}}] * 2
args = SFTConfig(output_dir={str(tmp_path / "out")!r}, max_steps=1, per_device_train_batch_size=2, report_to=[],
                 use_cpu=True, save_strategy="no")
trainer = SFTTrainer(model={str(tiny_dir)!r}, args=args, train_dataset=Dataset.from_list(rows))
trainer.train()
print(type(trainer.model).__name__, trainer.state.global_step)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "Phi3VForCausalLM 1"


# ---- what our saves write ----


@pytest.mark.parametrize("name", ["Phi-3-vision-128k-instruct", "Phi-3.5-vision-instruct"])
def test_saved_configs_keep_longrope_under_the_hub_keys(shared, name, tmp_path):
    """The hub's remote code and vLLM read `rope_scaling` ({type: su, long_factor, short_factor}, exactly these three
    keys) and `rope_theta`; a config written as transformers 5's `rope_parameters` alone runs there without LongRoPE."""
    from transformers import AutoConfig

    hub = json.loads((shared / "hub" / name / "config.json").read_text())
    config = AutoConfig.from_pretrained(shared / "hub" / name)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for key in ("rope_scaling", "rope_theta", "original_max_position_embeddings", "max_position_embeddings"):
        assert saved[key] == hub[key], key
    assert "rope_parameters" not in saved
    again = AutoConfig.from_pretrained(tmp_path)
    assert again.rope_parameters == config.rope_parameters


def test_a_saved_model_keeps_longrope_and_its_outputs(tiny_dir, tiny_config_dict, model, inputs, tmp_path):
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["rope_scaling"] == tiny_config_dict["rope_scaling"]
    with torch.no_grad():
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)


def test_saved_weights_follow_the_umask(tiny_dir, tmp_path):
    """safetensors writes 0600 whatever the umask: a checkpoint, the trained output and a merge are readable as the
    user's umask says (0644 under 022)."""
    import os
    import stat

    from phi3v_recipe.predict import load_for_inference, merge
    from phi3v_recipe.synthetic import write_sample_set
    from phi3v_recipe.train import main

    from .test_train import demo_args

    previous = os.umask(0o022)
    try:
        out = tmp_path / "out"
        sample = write_sample_set(tmp_path / "sample", rows=8, seed=1)
        main(demo_args(tiny_dir, sample, out, "--max_steps", "1", "--save_strategy", "steps", "--save_steps", "1"))
        model, processor = load_for_inference(str(out))
        merge(model, processor, str(tmp_path / "merged"))
    finally:
        os.umask(previous)
    weights = [
        *out.glob("*.safetensors"),
        *out.glob("checkpoint-*/*.safetensors"),
        *(tmp_path / "merged").glob("*.safetensors"),
    ]
    assert len(weights) >= 3
    assert {oct(stat.S_IMODE(path.stat().st_mode)) for path in weights} == {"0o644"}
