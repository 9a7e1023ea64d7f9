"""The benchmark's baselines are the recipes they name, its FLOP counts follow their formulas, its memory readings
come from the process measured, and the whole bench runs end to end on the tiny model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoProcessor

from phi3v_recipe import bench
from phi3v_recipe.bench import baselines, flops, micro
from phi3v_recipe.phi3_v import Phi3VConfig, Phi3VImageProcessor

from .test_processor import photo

QUESTION, ANSWER = "What is shown in this image?", "Product: Tote, Category: BAGS, Full Price: 1290"


def test_per_crop_baseline_computes_the_same_pixels():
    for size, num_crops in [((1000, 750), 4), ((750, 1000), 16), ((600, 200), 4)]:
        image = photo(*size)
        processor = Phi3VImageProcessor(num_crops=num_crops)
        ours = processor(image)["pixel_values"][0]
        naive = micro.naive_process(image, num_crops, processor.image_mean, processor.image_std)
        torch.testing.assert_close(naive, ours, atol=1e-5, rtol=0)


def test_padded_share():
    lengths = [10, 10, 5, 15]
    assert micro.padded_share(lengths, [[0, 1], [2, 3]]) == 1 - 40 / (20 + 30)
    assert micro.padded_share(lengths, [[0, 1], [2, 3]], pad_to=20) == 1 - 40 / 80
    assert micro.padded_share(lengths, [[2, 0], [1, 3]]) == 1 - 40 / (20 + 30)


@pytest.fixture(scope="module")
def processor(tiny_dir):
    return AutoProcessor.from_pretrained(tiny_dir)


def test_official_collator_trains_the_answer_and_pads_right(processor):
    rows = [
        {"image": photo(400, 300), "question": QUESTION, "answer": ANSWER},
        {"image": photo(300, 600, seed=1), "question": "Colour?", "answer": "Red"},
    ]
    batch = baselines.OfficialCollator(processor)(rows)
    tokenizer = processor.tokenizer
    for i, row in enumerate(rows):
        answer = tokenizer(f"{row['answer']}<|end|>\n<|endoftext|>", add_special_tokens=False).input_ids
        labels = batch["labels"][i]
        assert labels[labels != -100].tolist() == answer  # the answer only: no prompt, image or padding
        length = int(batch["attention_mask"][i].sum())
        assert batch["input_ids"][i, length:].eq(tokenizer.pad_token_id).all()  # right padding
        assert (batch["input_ids"][i, :length] == 32044).any()  # the image's positions are in the prompt
    assert batch["attention_mask"].equal(batch["input_ids"] != tokenizer.pad_token_id)
    assert batch["pixel_values"].shape[0] == 2 and batch["image_sizes"].shape == (2, 2)


def test_guide_collator_is_text_only_fixed_512_left_padded_labels_everywhere(processor):
    batch = baselines.GuideCollator(processor)([{"question": QUESTION, "answer": ANSWER}])
    assert batch["input_ids"].shape == (1, 512)
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1  # left padding
    assert batch["labels"].equal(batch["input_ids"])  # prompt and padding trained
    assert not (batch["input_ids"] == 32044).any() and "pixel_values" not in batch  # the image never reaches the model


def test_official_lora_targets(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    targets = set(baselines.official_lora_targets(model))
    assert "lm_head" in targets
    assert {n for n in targets if n.startswith("model.layers.0.")} == {
        "model.layers.0.self_attn.qkv_proj",
        "model.layers.0.self_attn.o_proj",
        "model.layers.0.mlp.gate_up_proj",
        "model.layers.0.mlp.down_proj",
    }
    embedding = model.model.vision_embed_tokens
    layers = embedding.img_processor.vision_model.encoder.layers
    used = embedding.img_processor.vision_model.layers_needed(embedding.feature_layer)
    clip = "model.vision_embed_tokens.img_processor.vision_model.encoder.layers"
    for i in range(len(layers)):
        names = {f"{clip}.{i}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")}
        names |= {f"{clip}.{i}.mlp.fc1", f"{clip}.{i}.mlp.fc2"}
        assert names <= targets if i < used else not names & targets  # the layers that never run are not adapted
    assert {"model.vision_embed_tokens.img_projection.0", "model.vision_embed_tokens.img_projection.2"} <= targets
    # --freeze_vision_model: the language model and lm_head only
    frozen = set(baselines.official_lora_targets(model, freeze_vision_model=True))
    assert frozen == {name for name in targets if ".vision_embed_tokens." not in name} and "lm_head" in frozen


def test_full_size_shapes_from_the_meta_device():
    shapes = flops.model_shapes(Phi3VConfig())
    d, inter, vocab = 3072, 8192, 32064
    assert shapes["decoder_linear"] == 32 * (d * 3 * d + d * d + d * 2 * inter + inter * d)
    assert shapes["head"] == vocab * d
    assert shapes["clip_layers"] == 23 and shapes["clip_tokens"] == 577  # hidden state -2 of ViT-L/14 at 336
    assert shapes["clip_linear"] == 23 * (4 * 1024 * 1024 + 2 * 1024 * 4096)
    assert shapes["patch"] == 1024 * 3 * 14 * 14
    assert shapes["projection"] == 4096 * d + d * d
    assert shapes["lora_projection"] == 64 * (4096 + d) + 64 * (d + d)
    assert shapes["lora_head"] == 64 * (d + vocab)


SHAPES = {
    "hidden": 8,
    "layers": 2,
    "decoder_linear": 1000,
    "head": 500,
    "clip_linear": 300,
    "patch": 20,
    "clip_layers": 1,
    "clip_hidden": 4,
    "clip_tokens": 5,
    "projection": 50,
    "lora_decoder": 10,
    "lora_head": 7,
    "lora_clip": 3,
    "lora_projection": 2,
}


def test_mode_flops_follow_the_formula():
    tokens, tokens_sq, answer, crops, image_tokens = 100, 12_000, 6, 3, 40
    attention = 2 * 2 * 8 * tokens_sq
    linear, attention_v, patch, projection = 3 * 2 * 300 * 5, 3 * 4 * 1 * 4 * 25, 3 * 2 * 20 * 5, 2 * 50 * image_tokens
    clip = linear + attention_v + patch + projection
    ours = flops.mode_flops(SHAPES, "ours", tokens, tokens_sq, answer, crops, image_tokens)
    assert ours["decoder"] == 4 * 1000 * tokens + 6 * 10 * tokens
    assert ours["attention"] == 3 * attention
    assert ours["head"] == 4 * 500 * answer
    assert ours["vision"] == clip
    assert ours["recompute"] == 2 * 1000 * tokens + attention
    assert ours["total"] == sum(v for k, v in ours.items() if k != "total")
    official = flops.mode_flops(SHAPES, "official", tokens, tokens_sq, answer, crops, image_tokens)
    assert official["head"] == 4 * 500 * tokens + 6 * 7 * tokens  # every position, LoRA on the head
    # Gradients flow through CLIP and the projection: frozen linear weights x2 (no weight gradient), attention x3, the
    # patch embedding below every adapted layer forward only, LoRA x6; the checkpointed CLIP layers run again.
    lora = 6 * (3 * 5 * crops + 2 * image_tokens)
    assert official["vision"] == 2 * (linear + projection) + 3 * attention_v + patch + lora
    assert official["recompute"] == ours["recompute"] + linear + attention_v
    frozen = flops.mode_flops(SHAPES, "official-frozen", tokens, tokens_sq, answer, crops, image_tokens)
    assert frozen["vision"] == clip and frozen["recompute"] == ours["recompute"]  # --freeze_vision_model: as ours
    assert frozen["head"] == official["head"] and frozen["decoder"] == ours["decoder"]
    trl_cpu = flops.mode_flops(SHAPES, "trl", tokens, tokens_sq, answer, crops, image_tokens, gpu=False)
    assert trl_cpu["head"] == 4 * 500 * tokens  # TRL's fused head scores every position off Triton devices
    guide = flops.mode_flops(SHAPES, "guide", 512, 512**2, answer, 0, 0)
    assert guide["decoder"] == 6 * 1000 * 512 and guide["head"] == 6 * 500 * 512 and guide["vision"] == 0


def test_analytic_table_pads_each_mode_its_way():
    stats = [{"tokens": t, "answer": 5, "crops": 2, "image_tokens": 30} for t in [100, 300, 300, 100, 300] * 80]
    rows = {r["mode"]: r for r in flops.analytic_table(SHAPES, stats, batch_size=2)}
    real = sum(s["tokens"] for s in stats) / len(stats)
    assert real <= rows["ours"]["tokens_per_row"] < 1.02 * real  # length-grouped: almost no padding
    assert rows["official"]["tokens_per_row"] > 1.2 * real and rows["guide"]["tokens_per_row"] == 512
    assert rows["ours"]["vs_ours"] == 1 and rows["official"]["vs_ours"] > rows["official-frozen"]["vs_ours"] > 1
    for mode in ("official-bs1", "official-frozen-bs1"):  # one row per device: no padding
        assert rows[mode]["tokens_per_row"] == real
    assert rows["ours-no-ckpt"]["recompute"] == 0 and rows["ours-no-ckpt"]["vs_ours"] < 1
    assert rows["ours-ckpt-2"]["recompute"] == pytest.approx(rows["ours"]["recompute"] / 2)
    square = sum(s["tokens"] ** 2 for s in stats) / len(stats)
    useful = flops.mode_flops(SHAPES, "ours", real, square, 5, 2, 30)
    assert rows["ours"]["model"] == pytest.approx(useful["total"] - useful["recompute"])


def test_token_stats_scale_image_tokens_to_16_crops(tmp_path, processor):
    path = tmp_path / "wide.png"
    Image.new("RGB", (600, 200)).save(path)
    row = {"images": [str(path)], "messages": [{"role": "assistant", "content": [{"type": "text", "text": "Red"}]}]}
    from phi3v_recipe.phi3_v.image_processing_phi3_v import hd_grid, num_image_tokens

    stats = flops.token_stats([row], [1000], processor, num_crops=16)[0]
    base = processor.image_processor.num_crops
    assert stats["tokens"] == 1000 - num_image_tokens(600, 200, base) + num_image_tokens(600, 200, 16)
    *_, rows, cols = hd_grid(600, 200, 16)
    assert stats["crops"] == rows * cols + 1 and stats["image_tokens"] == num_image_tokens(600, 200, 16)


def test_vm_hwm_is_the_measured_process_own_peak():
    code = (
        "import numpy as np; from phi3v_recipe.bench.measure import vm_hwm_mb; a = np.ones(400 * 2**20 // 8); "
        "del a; print(vm_hwm_mb())"
    )
    peak = float(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    )
    assert 400 < peak < 2000


def run_bench(tmp_path, modes: list[str]) -> tuple[dict, dict]:
    out = tmp_path / "bench.json"
    args = ["--rows", "8", "--steps", "2", "--warmup", "1", "--repeats", "1", "--batch_size", "2", "--timeout", "300"]
    args += ["--modes", ",".join(modes), "--skip", "preprocessing,pipes", "--out", str(out)]
    bench.main([*args, "--device", "cpu", "--threads", "1"])
    results = json.loads(out.read_text())
    runs = {r["mode"]: r for r in results["training_runs"]}
    assert set(runs) == set(modes)
    for run in runs.values():
        assert len(run["step_seconds"]) == 2 and run["samples_per_s_median_step"] > 0
        assert run["main_peak_mb"] > 100 and run["tree_peak_pss_mb"] > 100  # the child's own figures
        assert run["train_loss"] == run["train_loss"]  # trained (a number, not NaN)
        # CPU seconds per sample, the process tree's: at most the wall time x the cores (1 thread + its workers)
        assert 0 < run["cpu_s_per_sample"] <= 4 / run["samples_per_s_wall"]
    assert {r["mode"] for r in results["flops_full_size"]} == set(baselines.MODES)  # every mode, counted
    return runs, results


def test_the_bench_runs_ours_beside_the_cookbooks_lora_in_fresh_processes(tmp_path):
    """The default tier's bench: ours, TRL's own collator and the cookbook's LoRA (as its scripts run it, per-device
    batch 1, and batched), each in its own process; every mode runs in the slow tier (make test-all)."""
    runs, results = run_bench(tmp_path, ["official", "official-frozen-bs1", "trl", "ours"])
    assert runs["ours"]["trainable_params"] == runs["trl"]["trainable_params"]  # the same LoRA
    assert runs["official"]["trainable_params"] > runs["ours"]["trainable_params"]  # r 64 on head and CLIP too
    bs1 = runs["official-frozen-bs1"]
    assert (bs1["batch_size"], bs1["per_device_batch"], bs1["gradient_accumulation_steps"]) == (2, 1, 2)
    assert "cpu_s_per_sample" in results["vs_official"]["ours / official-frozen-bs1"]["2"]
    assert list(results["vs_official"])[0] == "ours / official-frozen-bs1"  # the cookbook scripts' batch leads


@pytest.mark.slow
def test_the_bench_runs_every_mode_in_fresh_processes(tmp_path):
    runs, _ = run_bench(tmp_path, baselines.MODES)
    assert runs["guide"]["batch_size"] == 1 and runs["ours"]["batch_size"] == 2
    assert runs["ours"]["trainable_params"] == runs["ours-no-ckpt"]["trainable_params"]
    assert runs["official-frozen"]["trainable_params"] > runs["ours"]["trainable_params"]  # + lm_head
    assert runs["official-frozen"]["trainable_params"] < runs["official"]["trainable_params"]
    assert runs["official-bs1"]["trainable_params"] == runs["official"]["trainable_params"]
    for mode in ("official-bs1", "official-frozen-bs1"):  # per-device 1 x 2 accumulated: the same rows per step
        run = runs[mode]
        assert (run["batch_size"], run["per_device_batch"], run["gradient_accumulation_steps"]) == (2, 1, 2)


def test_a_bench_run_removes_its_scratch_folder_when_it_exits(tmp_path):
    """Each bench builds its model and data in a scratch folder (scratch_dir); runs used to leave theirs behind."""
    code = "from phi3v_recipe.bench import scratch_dir; work = scratch_dir('phi3v-bench-'); (work / 'model').mkdir(); "
    code += "(work / 'model' / 'weights').write_bytes(bytes(1000)); print(work)"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, timeout=120
    )
    work = Path(done.stdout.strip())
    assert work.parent == tmp_path and work.name.startswith("phi3v-bench-")
    assert not work.exists() and list(tmp_path.iterdir()) == []


def test_head_share():
    assert flops.head_share(flops.model_shapes(Phi3VConfig())) == pytest.approx(
        32064 * 3072 / (32064 * 3072 + 32 * (3072 * 9216 + 3072 * 3072 + 3072 * 16384 + 8192 * 3072))
    )


def test_the_memory_bench_counts_a_full_size_layer_as_the_formula_does_and_orders_the_policies(tmp_path):
    from phi3v_recipe.bench import memory

    results = memory.main(["--batches", "1,4", "--out", str(tmp_path / "memory.json")])
    assert results["layer_bytes_per_token"]["counted"] == results["layer_bytes_per_token"]["formula"]
    rows = {(r["batch_size"], r["checkpointing"]): r for r in results["rows"]}
    for batch in (1, 4):
        totals = [rows[batch, policy]["total"] for policy in ("off", "every 4th", "every 2nd", "all")]
        assert totals == sorted(totals, reverse=True) and len(set(totals)) == 4
    assert rows[4, "off"]["activations"] > 3.5 * rows[1, "off"]["activations"]
    assert {r["weights"] for r in rows.values()} == {7.7}  # 4.15B parameters in bf16


def test_the_data_preparation_bench_compares_both_ways_on_the_same_rows(tmp_path):
    from phi3v_recipe.bench import prepare

    out = tmp_path / "prepare.json"
    args = ["--rows", "30,60", "--photos", "3", "--repeats", "1", "--timeout", "300", "--out", str(out)]
    results = prepare.main(args)  # a measurement that hangs fails the test after 300 s
    runs = {(r["rows"], r["mode"]): r for r in results["runs"]}
    assert set(runs) == {
        (n, mode) for n in (30, 60) for mode in ("sequential", "ours, first start", "ours, second start")
    }
    for (rows, _), run in runs.items():
        assert run["rows_kept"] == rows and run["cpu_s"] > 0 and run["peak_rss_mb"] > 100
        assert 0 < run["peak_anon_mb"] < run["peak_rss_mb"]
        assert run["tree_peak_pss_mb"] > 100  # the main process at least, its checking processes' own pages added
    assert results["decode_ms"] > 10 * results["header_ms"]  # photo-sized: decoding is the cost a header read avoids
    assert json.loads(out.read_text())["table"] and "million_rows_estimate" in results
    assert all("[" not in row["peak_anon_mb"] and float(row["peak_anon_mb"]) > 0 for row in results["table"])


def test_the_sequential_baseline_keeps_the_rows_ours_keeps(processor, tmp_path):
    from phi3v_recipe.bench import prepare
    from phi3v_recipe.data import DataArguments, prepare_data

    photos = prepare.write_photos(tmp_path / "data", 2)
    csv_path = prepare.write_rows(tmp_path / "data" / "rows.csv", 6, photos)
    args = DataArguments(dataset=str(csv_path), eval_fraction=0, prepared_dir=str(tmp_path / "p"))
    theirs, skipped = prepare.prepare_sequentially(args, processor, 8192)
    ours = prepare_data(args, processor, 8192)
    assert not skipped and not ours.skipped
    for name in ("images", "messages", "answers", "length"):
        assert theirs[name] == ours.train[name], name
