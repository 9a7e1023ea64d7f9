"""predict: adapters from a folder, from a pre-filled Hugging Face cache offline, merge and reload."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from phi3v_recipe.synthetic import write_sample_set
from phi3v_recipe.train import main as train

from .test_processor import photo
from .test_train import clean_env, demo_args, run_module

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def adapter_dir(tiny_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapter")
    csv_path = write_sample_set(tmp / "s", rows=16, seed=2)
    train(demo_args(tiny_dir, csv_path, tmp / "out", "--max_steps", "2", "--eval_fraction", "0"))
    return tmp / "out"


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "bag.png"
    photo(400, 300).save(path)
    return path


def put_in_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str) -> None:
    """The snapshot layout huggingface_hub writes: refs/main -> snapshots/<commit>/files (blobs symlinked)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir()
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        if file.is_file():
            blob = repo / "blobs" / f"{commit}-{file.name}"
            shutil.copy(file, blob)
            (snapshot / file.name).symlink_to(blob)


def run_predict(args, env):
    return run_module("predict", args, env, timeout=300)


def test_predict_from_a_local_folder(adapter_dir, image_file, tmp_path):
    result = run_predict(
        ["--adapter", str(adapter_dir), "--image", str(image_file), "--max_new_tokens", "5"], clean_env(tmp_path)
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_predict_offline_from_the_hub_cache(adapter_dir, tiny_dir, image_file, tmp_path):
    cache = tmp_path / "hf" / "hub"
    base_copy = tmp_path / "base"
    shutil.copytree(tiny_dir, base_copy)
    put_in_hub_cache(cache, "someone/tiny-phi3v", base_copy, "a" * 40)
    adapter_copy = tmp_path / "adapter"
    shutil.copytree(adapter_dir, adapter_copy)
    config = json.loads((adapter_copy / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/tiny-phi3v"  # as an adapter pushed from a Hub base would say
    (adapter_copy / "adapter_config.json").write_text(json.dumps(config))
    put_in_hub_cache(cache, "someone/phi3v-adapter", adapter_copy, "b" * 40)

    env = clean_env(tmp_path, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache))
    result = run_predict(
        ["--adapter", "someone/phi3v-adapter", "--image", str(image_file), "--max_new_tokens", "5"], env
    )
    assert result.returncode == 0, result.stderr[-3000:]

    missing = run_predict(["--adapter", "someone/not-there", "--image", str(image_file)], env)
    assert missing.returncode != 0
    assert "error: The adapter 'someone/not-there' is not a local folder and not in the Hugging Face cache" in (
        missing.stderr
    )
    assert "Traceback" not in missing.stderr


def test_merge_reload_gives_base_plus_adapter_logits(adapter_dir, image_file, tmp_path):
    from phi3v_recipe.conversation import conversation, render
    from phi3v_recipe.predict import load_for_inference, merge

    model, processor = load_for_inference(str(adapter_dir), dtype=torch.float32)
    prompt = render(processor, conversation("What is shown in this image?", 1), add_generation_prompt=True)
    from PIL import Image

    inputs = processor(prompt, [Image.open(image_file).convert("RGB")], return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs).logits
        with model.disable_adapter():
            base_only = model(**inputs).logits
    assert not torch.allclose(expected, base_only)  # the adapter does something

    merge(model, processor, tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, expected, atol=1e-4, rtol=1e-4)
    from safetensors import safe_open

    with safe_open(tmp_path / "merged" / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "model.vision_embed_tokens.img_processor.vision_model.embeddings.patch_embedding.weight" in keys
    assert not any("lora" in k or "base_layer" in k for k in keys)


def test_an_adapter_on_the_other_familys_base_is_one_line(tiny_dir, tiny4_dir, image_file, tmp_path):
    """Each family's adapter given the other family's base with --base: it crashed in the processor (one of its
    messages said to install torchvision); the families are compared first."""
    from safetensors.torch import save_file

    from phi3v_recipe.families import family_of

    for trained_on, other, family in [(tiny_dir, tiny4_dir, "phi3v"), (tiny4_dir, tiny_dir, "phi4mm")]:
        adapter = tmp_path / family
        family_of(trained_on).load_processor(trained_on).save_pretrained(adapter)  # as training saves it
        (adapter / "adapter_config.json").write_text(
            json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(trained_on), "r": 8})
        )
        save_file({"unused": torch.zeros(1)}, adapter / "adapter_model.safetensors")  # never read: refused before
        result = run_predict(
            ["--adapter", str(adapter), "--base", str(other), "--image", str(image_file)], clean_env(tmp_path)
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert f"is a {family} adapter (trained on {trained_on}), but the base {other} is a " in line, line
