"""Every shipped recipe and accelerate config parses; typos fail early and name the key."""

import dataclasses
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file

from phi3v_recipe.config import RecipeArguments, parse_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
ACCELERATE_CONFIGS = sorted((ROOT / "accelerate_configs").glob("*.yaml"))


def test_the_expected_recipes_and_configs_ship():
    assert {p.stem for p in RECIPES} >= {
        "burberry_lora",
        "burberry_qlora",
        "burberry_full_fsdp",
        "phi35v_burberry_lora",
        "demo",
    }
    assert {p.stem for p in ACCELERATE_CONFIGS} == {"single_gpu", "multi_gpu", "fsdp", "fsdp_qlora"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_parses_and_has_a_header(path):
    text = path.read_text()
    header = [line for line in text.splitlines()[:12] if line.startswith("#")]
    joined = "\n".join(header)
    for word in ("What:", "Hardware:", "Launch:", "Override example:"):
        assert word in joined, f"{path.name} header lacks '{word}'"
    # The header's launch command names this very recipe.
    assert path.stem in joined

    recipe, training, model = parse_recipe(["--config", str(path), "--use_cpu", "true", "--bf16", "false"])

    assert isinstance(recipe, RecipeArguments)
    assert model.model_name_or_path
    assert not training.trust_remote_code
    keys = set(yaml.safe_load(text)) - {"env"}
    assert keys <= {f.name for cls in (type(recipe), type(training), type(model)) for f in dataclasses.fields(cls)}


def test_recipe_specifics():
    qlora = parse_recipe(
        ["--config", str(ROOT / "recipes/burberry_qlora.yaml"), "--use_cpu", "true", "--bf16", "false"]
    )
    assert qlora[2].load_in_4bit and qlora[2].bnb_4bit_quant_type == "nf4" and qlora[2].use_peft
    full = parse_recipe(
        ["--config", str(ROOT / "recipes/burberry_full_fsdp.yaml"), "--use_cpu", "true", "--bf16", "false"]
    )
    assert not full[2].use_peft
    phi35 = parse_recipe(
        ["--config", str(ROOT / "recipes/phi35v_burberry_lora.yaml"), "--use_cpu", "true", "--bf16", "false"]
    )
    assert phi35[2].model_name_or_path == "microsoft/Phi-3.5-vision-instruct"
    lora = parse_recipe(["--config", str(ROOT / "recipes/burberry_lora.yaml"), "--use_cpu", "true", "--bf16", "false"])
    assert (
        lora[0].image_url_column == "imageurl"
        and lora[1].push_to_hub
        and lora[1].train_sampling_strategy == "group_by_length"
    )


def test_cli_flags_override_the_yaml():
    recipe, training, model = parse_recipe(
        ["--config", str(ROOT / "recipes/demo.yaml"), "--learning_rate", "1e-4", "--max_rows", "7", "--lora_r", "4"]
    )
    assert training.learning_rate == 1e-4 and recipe.max_rows == 7 and model.lora_r == 4


def test_misspelled_key_fails_before_loading_and_names_it(tmp_path):
    text = (ROOT / "recipes/demo.yaml").read_text().replace("learning_rate:", "lerning_rate:")
    (tmp_path / "typo.yaml").write_text(text)
    with pytest.raises(ValueError, match=r"Unknown key 'lerning_rate'.*Did you mean 'learning_rate'"):
        parse_recipe(["--config", str(tmp_path / "typo.yaml")])


def test_misspelled_cli_flag_fails():
    with pytest.raises(ValueError, match="lerning_rate"):
        parse_recipe(["--config", str(ROOT / "recipes/demo.yaml"), "--lerning_rate", "1e-4"])


def test_bad_value_names_the_key(tmp_path):
    text = (ROOT / "recipes/demo.yaml").read_text() + "num_crops: 40\n"
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ValueError, match="num_crops must be between 1 and 16"):
        parse_recipe(["--config", str(tmp_path / "bad.yaml")])


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.stem)
def test_accelerate_config_parses(path):
    config = load_config_from_file(str(path))
    assert config.num_machines == 1 and config.num_processes >= 1
    if path.stem.startswith("fsdp"):
        fsdp = config.fsdp_config
        assert config.distributed_type == "FSDP" and fsdp["fsdp_version"] == 2
        assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


def test_fsdp_shards_the_layers_each_family_names(tiny_dir, tiny4_dir):
    """The FSDP configs name no layer classes: Accelerate takes the model's `_no_split_modules`, which must be classes
    the model has (a missing one is skipped silently, and the layers would not be sharded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    for path in ACCELERATE_CONFIGS:
        config = load_config_from_file(str(path))
        if config.distributed_type == "FSDP":
            assert "fsdp_transformer_layer_cls_to_wrap" not in config.fsdp_config
    expected = {
        tiny_dir: {"Phi3DecoderLayer", "CLIPEncoderLayer"},
        tiny4_dir: {"Phi4MultimodalDecoderLayer"},
    }
    for folder, units in expected.items():
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
        assert set(model._no_split_modules) == units
        assert units <= {type(m).__name__ for m in model.modules()}
