"""The full-size random checkpoint: its shard layout and index on the tiny model (forced shard sizes, a given index),
the real config's tensors against the hub's own index (no weights written), and (slow) the real size written and
trained for one LoRA step."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from phi3v_recipe.errors import UserError
from phi3v_recipe.fullsize import INDEX, shard_plan, write_full_size

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sample_csv(tmp_path_factory):
    from phi3v_recipe.synthetic import write_sample_set

    return write_sample_set(tmp_path_factory.mktemp("sample"), rows=16, seed=0)


def test_without_an_index_the_tensors_are_cut_into_shards_in_order_none_over_the_limit():
    shapes = {"a": (10,), "b": (30,), "c": (20,), "d": (5,)}  # bf16: 20, 60, 40, 10 bytes
    plan = shard_plan(shapes, None, max_bytes=64)
    assert plan == {
        "a": "model-00001-of-00003.safetensors",
        "b": "model-00002-of-00003.safetensors",
        "c": "model-00003-of-00003.safetensors",
        "d": "model-00003-of-00003.safetensors",
    }
    assert set(shard_plan(shapes, None, max_bytes=1000).values()) == {"model.safetensors"}
    with pytest.raises(UserError, match="does not name this model's tensors"):
        shard_plan(shapes, {"weight_map": {"a": "x", "b": "x", "c": "x"}})


def hub_folder_of(tiny_dir: Path, folder: Path, index: dict | None) -> Path:
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        shutil.copyfile(tiny_dir / name, folder / name)
    if index is not None:
        (folder / INDEX).write_text(json.dumps(index))
    return folder


def test_the_hub_index_is_followed_and_the_checkpoint_loads(tiny_dir, tmp_path):
    """The tiny config with a hand-made index (every third tensor in the second shard): each tensor is in the shard the
    index names, in bf16; norms are 1, biases 0, the rest random; the hub files are copied byte for byte; the model
    loads with the Auto classes and runs."""
    with safe_open(tiny_dir / "model.safetensors", "pt") as weights:
        names = sorted(weights.keys())
    weight_map = {name: f"model-0000{1 + (i % 3 == 0)}-of-00002.safetensors" for i, name in enumerate(names)}
    hub = hub_folder_of(tiny_dir, tmp_path / "hub", {"metadata": {"total_size": 0}, "weight_map": weight_map})
    out = write_full_size(hub, tmp_path / "out", seed=1)
    index = json.loads((out / INDEX).read_text())
    assert index["weight_map"] == weight_map
    seen = set()
    for shard in set(weight_map.values()):
        with safe_open(out / shard, "pt") as weights:
            for name in weights.keys():
                tensor = weights.get_tensor(name)
                assert weight_map[name] == shard and tensor.dtype == torch.bfloat16
                if name.endswith("bias"):
                    assert not tensor.any()
                elif tensor.dim() == 1 and "norm" in name:
                    assert (tensor == 1).all()
                else:
                    assert tensor.float().std() > 0
                seen.add(name)
    assert seen == set(names)
    assert index["metadata"]["total_size"] == sum((out / s).stat().st_size for s in set(weight_map.values())) - sum(
        8 + int.from_bytes((out / s).read_bytes()[:8], "little") for s in set(weight_map.values())
    )  # the tensors' bytes: each file less its header
    assert (out / "config.json").read_bytes() == (hub / "config.json").read_bytes()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 100, 200]])).logits).all()


def test_without_an_index_a_forced_shard_size_gives_the_hubs_file_names(tiny_dir, tmp_path):
    hub = hub_folder_of(tiny_dir, tmp_path / "hub", None)
    out = write_full_size(hub, tmp_path / "out", max_shard_bytes=2_000_000)
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and shards[-1] == f"model-{len(shards):05d}-of-{len(shards):05d}.safetensors"
    assert sorted(set(json.loads((out / INDEX).read_text())["weight_map"].values())) == shards
    with pytest.raises(UserError, match="is not empty"):
        write_full_size(hub, out)


def test_the_real_configs_tensors_are_the_hubs_index_to_the_byte(shared):
    """Phi-3-Vision's config.json, built on the meta device: the same 592 tensor names as the hub's index, and in bf16
    exactly the index's total_size (8,293,242,880 bytes)."""
    from phi3v_recipe.fullsize import _numel
    from phi3v_recipe.phi3_v import Phi3VConfig, Phi3VForCausalLM

    hub = shared / "hub" / "Phi-3-vision-128k-instruct"
    index = json.loads((hub / INDEX).read_text())
    with torch.device("meta"):
        shapes = {
            n: tuple(t.shape) for n, t in Phi3VForCausalLM(Phi3VConfig.from_pretrained(hub)).state_dict().items()
        }
    assert shard_plan(shapes, index) == index["weight_map"]
    assert sum(2 * _numel(shape) for shape in shapes.values()) == index["metadata"]["total_size"]


@pytest.mark.slow
def test_a_full_size_checkpoint_is_written_in_a_minute_or_two_and_takes_a_lora_step(shared, tmp_path, sample_csv):
    """The real Phi-3-Vision, random, written from the hub files, then one LoRA step at num_crops 1 on the CPU in
    bf16 through the training module (bounded in time: a hang fails the test)."""
    import time

    out = tmp_path / "phi3v-full"
    start = time.perf_counter()
    write_full_size(shared / "hub" / "Phi-3-vision-128k-instruct", out)
    print(f"written in {time.perf_counter() - start:.0f} s")
    assert (
        json.loads((out / INDEX).read_text())["weight_map"]
        == json.loads((shared / "hub" / "Phi-3-vision-128k-instruct" / INDEX).read_text())["weight_map"]
    )
    run = subprocess.run(
        [
            sys.executable, "-m", "phi3v_recipe.train", "--config", str(ROOT / "recipes/burberry_lora.yaml"),
            "--model_name_or_path", str(out), "--dataset", str(sample_csv), "--image_column", "local_image_path",
            "--image_url_column", "null", "--use_cpu", "true", "--bf16", "false", "--dtype", "bfloat16",
            "--num_crops", "1", "--max_rows", "8", "--eval_fraction", "0", "--eval_strategy", "no", "--max_steps", "1",
            "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1", "--save_strategy", "no",
            "--report_to", "none", "--push_to_hub", "false", "--dataloader_num_workers", "0",
            "--output_dir", str(tmp_path / "run"), "--scored_evaluation", "false",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file(), run.stdout[-2000:]
    print(run.stdout[-1500:])


def test_a_merge_onto_a_sharded_base_is_the_bases_shards_and_index_with_new_weights(tiny_dir, tmp_path):
    """A bf16 base in two shards (the tiny config with a hand-made index, as the hub's Phi-3-Vision has two), an
    adapter with nonzero weights: the merge writes each tensor in the shard the base's index names, in bf16, with the
    base's config.json byte for byte, and its logits are the base-with-adapter's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from phi3v_recipe.predict import load_for_inference, merge

    with safe_open(tiny_dir / "model.safetensors", "pt") as weights:
        names = sorted(weights.keys())
    weight_map = {name: f"model-0000{1 + (i % 2)}-of-00002.safetensors" for i, name in enumerate(names)}
    hub = hub_folder_of(tiny_dir, tmp_path / "hub", {"metadata": {"total_size": 0}, "weight_map": weight_map})
    config = json.loads((hub / "config.json").read_text())
    (hub / "config.json").write_text(json.dumps(config | {"torch_dtype": "bfloat16"}))  # as the hub's says
    base_dir = write_full_size(hub, tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto")
    adapted = get_peft_model(base, LoraConfig(r=4, target_modules=["qkv_proj", "o_proj"], init_lora_weights=False))
    adapted.save_pretrained(tmp_path / "adapter")
    model, processor = load_for_inference(str(tmp_path / "adapter"))
    ids = torch.tensor([[1, 100, 200, 300]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits.float()
    out = merge(model, processor, str(tmp_path / "merged"))
    index = json.loads((out / INDEX).read_text())
    assert index["weight_map"] == weight_map
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(set(weight_map.values()))
    for shard in set(weight_map.values()):
        with safe_open(out / shard, "pt") as weights:
            assert all(weights.get_tensor(name).dtype == torch.bfloat16 for name in weights.keys())
    assert (out / "config.json").read_bytes() == (base_dir / "config.json").read_bytes()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    with torch.no_grad():
        got = merged(input_ids=ids).logits.float()
    assert torch.allclose(got, expected, atol=0.05, rtol=0.02), (got - expected).abs().max()
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto")(input_ids=ids).logits.float()
    assert (plain - got).abs().max() > 0.1  # the adapter changed the logits, and the merge kept the change


@pytest.mark.slow
def test_a_full_size_merge_is_the_hubs_two_shards_and_index_in_bf16(shared, tmp_path):
    """The real size: a random full-size base written from the hub files, a LoRA adapter with nonzero weights on it
    (made in its own process), then `predict --merge`: the hub's weight_map and shard files, bf16 (8.29 GB, not
    16.6), and the peak memory printed."""
    hub = shared / "hub" / "Phi-3-vision-128k-instruct"
    base = write_full_size(hub, tmp_path / "base")
    make_adapter = (
        "import sys, phi3v_recipe\n"
        "from peft import LoraConfig, get_peft_model\n"
        "from transformers import AutoModelForCausalLM\n"
        "model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype='auto')\n"
        "get_peft_model(model, LoraConfig(r=8, target_modules=['qkv_proj', 'o_proj'], init_lora_weights=False))"
        ".save_pretrained(sys.argv[2])\n"
    )
    subprocess.run([sys.executable, "-c", make_adapter, str(base), str(tmp_path / "adapter")], check=True, timeout=900)
    from PIL import Image

    Image.new("RGB", (336, 336), "white").save(tmp_path / "white.png")
    done = subprocess.run(
        [
            sys.executable, "-m", "phi3v_recipe.predict", "--adapter", str(tmp_path / "adapter"),
            "--image", str(tmp_path / "white.png"), "--num_crops", "1", "--max_new_tokens", "1",
            "--merge", str(tmp_path / "merged"),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    print(done.stdout[-300:])
    out = tmp_path / "merged"
    hub_index = json.loads((hub / INDEX).read_text())
    index = json.loads((out / INDEX).read_text())
    assert index["weight_map"] == hub_index["weight_map"]
    assert index["metadata"]["total_size"] == hub_index["metadata"]["total_size"]  # bf16: 8,293,242,880 bytes
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(set(hub_index["weight_map"].values()))
    assert "peak memory of this process" in done.stdout


def test_a_cut_model_keeps_its_files_and_width_with_fewer_layers(tiny_dir, tmp_path):
    """``fullsize.cut``: the config with fewer decoder layers, every other file a link to the model's; it loads (the
    later layers' weights skipped) with the first layers' weights as they were."""
    from transformers import AutoModelForCausalLM

    from phi3v_recipe.fullsize import cut

    small = cut(tiny_dir, 1, tmp_path / "cut")
    assert json.loads((small / "config.json").read_text())["num_hidden_layers"] == 1
    assert all((small / p.name).is_symlink() for p in tiny_dir.iterdir() if p.name != "config.json")
    whole = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(small, dtype=torch.float32)
    assert len(model.model.layers) == 1
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight, whole.model.layers[0].mlp.down_proj.weight)


@pytest.mark.slow
def test_the_benchs_merge_point_on_a_sharded_bf16_base(tiny_dir, tmp_path):
    """bench/fullsize.py's merge point on the tiny model written in bf16 shards: the merged folder's tensors in the
    base's files, in bf16, and its logits the adapted base's, the adapter's own change far larger than the gap."""
    from phi3v_recipe.bench.fullsize import point_merge

    hub = hub_folder_of(tiny_dir, tmp_path / "hub", None)
    config = json.loads((hub / "config.json").read_text())
    (hub / "config.json").write_text(json.dumps(config | {"torch_dtype": "bfloat16"}))  # as the hub's says
    row = point_merge(write_full_size(hub, tmp_path / "base", max_shard_bytes=2_000_000), tmp_path)
    assert row["layout_is_the_bases"] and row["files"] > 1 and row["dtypes"] == ["BF16"]
    assert row["merged_vs_adapted"] < 0.1 * row["adapter_changes_logits"] and row["merged_top1_agreement"] > 0.9
    assert row["merge_peak_gib"] > 0
