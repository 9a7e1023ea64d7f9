"""What a user takes away is the base's hub folder with new weights (so the hub's own code and vLLM load it, checked
by hand against them: see the closing notes), and an adapter that older PEFT reads. Structural checks, offline."""

import json
import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from phi3v_recipe.export import PEFT_0_11_KEYS, for_older_peft
from phi3v_recipe.predict import load_for_inference, merge

from .test_processor import photo
from .test_train import demo_args

HUB_AUTO_MAP = {
    "AutoConfig": "configuration_phi3_v.Phi3VConfig",
    "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM",
}


@pytest.fixture(scope="module")
def hub_like_base(tiny_dir, tmp_path_factory):
    """The tiny checkpoint as a hub folder is laid out: config.json with auto_map, and remote code files."""
    base = tmp_path_factory.mktemp("hub") / "base"
    shutil.copytree(tiny_dir, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "auto_map": HUB_AUTO_MAP}, indent=2))
    for name in ("configuration_phi3_v.py", "modeling_phi3_v.py", "processing_phi3_v.py"):
        (base / name).write_text(f"# the hub's {name} (a stand-in: only its bytes are checked)\n")
    return base


@pytest.fixture(scope="module")
def adapter(hub_like_base, tmp_path_factory):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(hub_like_base)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["qkv_proj", "o_proj"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    get_peft_model(model, config).save_pretrained(out)
    return out


def same_bytes(a, b) -> bool:
    return a.read_bytes() == b.read_bytes()


def test_a_merged_model_is_the_base_folder_with_new_weights(hub_like_base, adapter, tmp_path, capsys):
    model, processor = load_for_inference(str(adapter))
    out = merge(model, processor, str(tmp_path / "merged"))
    base_files = {p.name for p in hub_like_base.iterdir()}
    assert {p.name for p in out.iterdir()} == base_files  # nothing more, nothing less
    for name in base_files - {"model.safetensors"}:
        assert same_bytes(out / name, hub_like_base / name), (
            name
        )  # config.json (auto_map, rope_scaling), tokenizer, .py
    assert not same_bytes(out / "model.safetensors", hub_like_base / "model.safetensors")
    assert "in the hub's own code" in capsys.readouterr().out
    with torch.no_grad():  # and it loads natively with the adapter's outputs
        inputs = processor(
            "<|user|>\n<|image_1|>\nWhat?<|end|>\n<|assistant|>\n", [photo(64, 48)], return_tensors="pt"
        )
        merged = AutoModelForCausalLM.from_pretrained(out).eval()
        torch.testing.assert_close(merged(**inputs).logits, model(**inputs).logits, atol=1e-4, rtol=1e-4)


def test_a_merge_at_another_num_crops_changes_that_field_only(hub_like_base, adapter, tmp_path):
    model, processor = load_for_inference(str(adapter), num_crops=9)
    out = merge(model, processor, str(tmp_path / "merged"))
    before = json.loads((hub_like_base / "preprocessor_config.json").read_text())
    assert json.loads((out / "preprocessor_config.json").read_text()) == {**before, "num_crops": 9}


def test_a_base_without_remote_code_says_where_the_merge_loads(tiny_dir, tmp_path, capsys):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["qkv_proj"]))
    lora.save_pretrained(tmp_path / "adapter")
    merge(*load_for_inference(str(tmp_path / "adapter")), str(tmp_path / "merged"))
    assert "has no remote code files (no auto_map)" in capsys.readouterr().out


def test_an_adapter_config_reads_in_peft_0_11(tmp_path, tiny_dir):
    """PEFT 0.11-0.13 build LoraConfig(**file): every key must be one of its fields (read from its source). Keys that
    today's PEFT added are left out when at their default, so today's PEFT reads the very same config."""
    from peft import PeftConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["qkv_proj"])).save_pretrained(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert set(json.loads((tmp_path / "a" / "adapter_config.json").read_text())) - PEFT_0_11_KEYS  # today's has more
    assert for_older_peft(tmp_path / "b") == []
    assert set(json.loads((tmp_path / "b" / "adapter_config.json").read_text())) <= PEFT_0_11_KEYS
    assert PeftConfig.from_pretrained(tmp_path / "b").to_dict() == PeftConfig.from_pretrained(tmp_path / "a").to_dict()

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    get_peft_model(model, LoraConfig(r=4, target_modules=["qkv_proj"], use_qalora=True)).save_pretrained(
        tmp_path / "c"
    )
    assert for_older_peft(tmp_path / "c") == ["use_qalora"]  # a setting old PEFT lacks is kept, and said


def test_a_trained_adapter_carries_the_base_files_and_a_card_for_three_stacks(hub_like_base, tmp_path):
    from phi3v_recipe.synthetic import write_sample_set
    from phi3v_recipe.train import main

    out = tmp_path / "out"
    sample = write_sample_set(tmp_path / "sample", rows=8, seed=2)
    main(demo_args(hub_like_base, sample, out, "--max_steps", "1", "--eval_fraction", "0"))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert same_bytes(out / name, hub_like_base / name), name
    before = json.loads((hub_like_base / "preprocessor_config.json").read_text())  # the demo trains at num_crops 1
    assert json.loads((out / "preprocessor_config.json").read_text()) == {**before, "num_crops": 1}
    assert set(json.loads((out / "adapter_config.json").read_text())) <= PEFT_0_11_KEYS
    card = (out / "README.md").read_text()
    assert "Base revision: none (a local folder)" in card and "transformers 5." in card and "peft 0." in card
    assert "trust_remote_code=True" in card and "vllm serve merged --trust-remote-code" in card
    assert "python -m phi3v_recipe.predict --adapter" in card
