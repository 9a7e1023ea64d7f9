"""The memory estimate (phi3v_recipe/memory.py) against steps counted exactly: on the tiny model here, and the
full-size numbers recorded in MEASURED (bench/step_memory.py on the CPU, with the commit that measured them)."""

from pathlib import Path

import pytest

from phi3v_recipe.memory import (
    MEASURED,
    MEASURED_STAGES_4_LAYERS,
    Shape,
    checkpointed_layers,
    gathered_layer,
    layer_bytes_per_token,
    shape_of,
    step_memory,
)

ROOT = Path(__file__).resolve().parents[1]
PHI3V_FULL = Shape(**MEASURED["shape"])


def saved_by_formula(s: Shape, rows: int, tokens: int, every, rank: int = 64) -> int:
    """What the model's forward saves for the backward pass (memory.step_memory's activations, less the layer the
    backward pass rebuilds)."""
    parts = step_memory(s, batch=rows, tokens=tokens, answer=0, crops=0, every=every, rank=rank)
    rebuilt = rows * tokens * layer_bytes_per_token(s, rank) if checkpointed_layers(s.layers, every) else 0
    return parts["activations"] - rebuilt


def test_the_shape_of_the_real_config_is_the_recorded_one():
    from phi3v_recipe.phi3_v import Phi3VConfig

    assert shape_of(Phi3VConfig()) == PHI3V_FULL
    assert PHI3V_FULL.params == 4_146_621_440  # the hub index's 8,293,242,880 bf16 bytes


@pytest.mark.parametrize("step", MEASURED["steps"], ids=lambda s: f"batch{s['rows']}-every{s['every']}")
def test_the_estimate_is_within_10_percent_of_each_full_size_step_measured(step):
    """Saved activations: the formula to the byte (give or take the labelled positions' int64 index, 8 bytes each)
    where the CPU's attention kernel kept no T x T probabilities; the trainable state to the byte; the peak (no GPU
    margin: the CPU has none) within 10%."""
    parts = step_memory(
        PHI3V_FULL,
        batch=step["rows"],
        tokens=step["tokens"],
        answer=step["answer"],
        crops=step["crops"],
        every=step["every"],
        rank=64,
    )
    formula = saved_by_formula(PHI3V_FULL, step["rows"], step["tokens"], step["every"])
    if step["saved_attention_probs"] == 0:
        assert step["saved"] == pytest.approx(formula, rel=0.002)
    assert parts["trainable_state"] == step["trainable"]
    assert parts["weights"] == pytest.approx(step["weights"], abs=10_000)  # the rotary buffers: 5,000 bytes
    counted = parts["total"] - parts["margin"]
    assert counted == pytest.approx(step["peak"], rel=0.10), (counted / 2**30, step["peak"] / 2**30)


@pytest.mark.parametrize("rows,every", [(1, 1), (2, 1), (1, 2), (1, None)])
def test_the_saved_activations_of_a_tiny_step_are_the_formulas(rows, every, tiny_dir, tmp_path, monkeypatch):
    """The recipe's own step (build_trainer, two optimiser steps, bf16 autocast) on the tiny model, counted by
    autograd's hooks: the formula to the byte with every layer checkpointed (the recipes' policy), within 1% with
    a layer or more kept whole; the trainable state to the byte."""
    from transformers import AutoConfig

    from phi3v_recipe.bench.step_memory import measure
    from phi3v_recipe.synthetic import write_sample_set

    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "tiny-phi3v").symlink_to(tiny_dir)
    write_sample_set(tmp_path / "data" / "sample", rows=8, seed=0)
    step = measure(ROOT / "recipes" / "burberry_lora.yaml", str(tiny_dir), rows, every)
    s = shape_of(AutoConfig.from_pretrained(tiny_dir))
    formula = saved_by_formula(s, step["rows"], step["tokens"], every)
    assert step["saved_attention_probs"] == 0
    if every == 1:
        assert 0 <= step["saved"] - formula <= 8 * step["rows"] * step["answer"]
    else:
        assert step["saved"] == pytest.approx(formula, rel=0.01)
    assert step["trainable"] == 16 * 64 * s.lora_width


def test_checkpointing_and_quantization_and_sharding_move_the_parts_they_should():
    args = dict(batch=4, tokens=2500, answer=20, crops=17, rank=64)
    whole, every_2nd, none = (step_memory(PHI3V_FULL, every=e, **args) for e in (1, 2, None))
    assert whole["activations"] < every_2nd["activations"] < none["activations"]
    assert whole["weights"] == none["weights"] and whole["trainable_state"] == none["trainable_state"]
    four_bit = step_memory(PHI3V_FULL, every=1, quantized=True, **args)
    assert four_bit["weights"] < 0.4 * whole["weights"] and four_bit["trainable_state"] == whole["trainable_state"] / 2
    full_1, full_8 = (step_memory(PHI3V_FULL, every=1, full=True, gpus=g, **args) for g in (1, 8))
    assert full_1["trainable_state"] == pytest.approx(8 * full_8["trainable_state"])
    assert full_1["trainable_state"] == 12 * (PHI3V_FULL.params - PHI3V_FULL.vision_tower)  # the tower frozen


def test_the_kv_cache_counted_is_the_one_transformers_generate_holds(tiny_dir):
    """GRPO's generation term: keys and values of every layer, per token and key/value head (the tiny model in
    fp32: 4 bytes each)."""
    import torch
    from transformers import AutoModelForCausalLM

    from phi3v_recipe.memory import kv_cache

    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    ids = torch.randint(3, 100, (3, 7))
    out = model.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False, return_dict_in_generate=True)
    cache = out.past_key_values
    held = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert held == kv_cache(shape_of(model.config), rows=3, tokens=7 + 5 - 1, dtype_bytes=4)


def test_the_estimate_holds_a_scaled_down_phi4_multimodal_step_whose_vision_tower_trains():
    """Phi-4-multimodal's step (memory.MEASURED_PHI4MM_2_LAYERS): the trained state to the byte (the LoRA and the
    image embedding's trained parameters, 16 bytes each), the peak within 10%, the estimate above it."""
    from transformers import Phi4MultimodalConfig

    from phi3v_recipe.families.phi4mm import VISION_LORA_RANK
    from phi3v_recipe.memory import MEASURED_PHI4MM_2_LAYERS

    step = MEASURED_PHI4MM_2_LAYERS["step"]
    shape = shape_of(Phi4MultimodalConfig(num_hidden_layers=MEASURED_PHI4MM_2_LAYERS["layers"]))
    parts = step_memory(
        shape, batch=step["rows"], tokens=step["tokens"], answer=step["answer"], crops=step["crops"],
        every=step["every"], rank=VISION_LORA_RANK, trained_whole=shape.vision_params - shape.vision_unused,
    )  # fmt: skip
    assert parts["trainable_state"] == step["trainable"]
    assert 1.0 <= (parts["total"] - parts["margin"]) / step["peak"] <= 1.10


@pytest.mark.parametrize("step", MEASURED_STAGES_4_LAYERS["steps"], ids=lambda s: s["stage"])
def test_the_estimate_of_each_stage_is_within_10_percent_of_its_step_measured_on_a_4_layer_model(step):
    """SFT, GRPO (its generation's KV cache before the training passes) and DPO (chosen and rejected rows, the
    reference pass's vision beside the activations) on the same photos (memory.MEASURED_STAGES_4_LAYERS)."""
    from phi3v_recipe.memory import generation_memory
    from phi3v_recipe.phi3_v import Phi3VConfig

    shape = shape_of(Phi3VConfig(num_hidden_layers=MEASURED_STAGES_4_LAYERS["layers"]))
    parts = step_memory(
        shape, batch=step["rows"], tokens=step["tokens"], answer=step["answer"], crops=step["crops"], every=1,
        rank=64, generation=generation_memory(shape, step.get("generated", 0), step["tokens"]),
        reference=step["stage"] == "dpo",
    )  # fmt: skip
    assert 0.9 <= (parts["total"] - parts["margin"]) / step["peak"] <= 1.1


@pytest.mark.slow
def test_an_fsdp_step_holds_each_process_its_share_of_fp32_weights_and_adamw(tiny_dir, tmp_path, monkeypatch):
    """burberry_full_fsdp's step under FSDP over two processes (bench/fullsize.py's fsdp point, the tiny model cut
    to one layer): together the processes hold every trained weight once in fp32 with its gradient and AdamW's two
    moments, and the frozen tower once in bf16, as the formula's sharded terms say (to the byte, less the rotary
    buffers each process holds); each process's step peak is above what it holds."""
    from transformers import AutoConfig

    from phi3v_recipe.bench.fullsize import point_fsdp
    from phi3v_recipe.synthetic import write_sample_set

    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "tiny-phi3v").symlink_to(tiny_dir)
    write_sample_set(tmp_path / "data" / "sample", rows=8, seed=0)
    [row] = point_fsdp(tiny_dir, tmp_path, layers=1, batches=(1,))
    s = shape_of(AutoConfig.from_pretrained(tmp_path / "phi3v-1-layers"))
    parts = step_memory(s, batch=1, tokens=100, answer=10, crops=1, every=1, rank=0, full=True, gpus=2)
    sharded = parts["weights"] - gathered_layer(s) + parts["trainable_state"]
    held = sum(step["weights"] + step["trainable"] for step in row["measured"])
    assert held == pytest.approx(2 * sharded, abs=20_000)  # two processes; each holds the rotary buffers whole
    assert all(step["processes"] == 2 for step in row["measured"])
    assert all(step["step_peak"] > step["weights"] + step["trainable"] for step in row["measured"])


def test_the_fsdp_formula_is_the_counted_fsdp_steps():
    """The full fine-tuning terms against burberry_full_fsdp's steps counted under FSDP over two processes on a 2-layer
    cut (MEASURED_FSDP_2_LAYERS): the trained parameters exactly, the held shards within 0.01%, the step peak within
    10%, the estimate above it."""
    from phi3v_recipe.memory import MEASURED_FSDP_2_LAYERS as FSDP
    from phi3v_recipe.phi3_v import Phi3VConfig

    s = shape_of(Phi3VConfig(num_hidden_layers=FSDP["layers"]))
    for step in FSDP["steps"]:
        parts = step_memory(
            s, batch=step["rows"], tokens=step["tokens"], answer=step["answer"], crops=step["crops"], every=1,
            rank=0, full=True, gpus=FSDP["gpus"],
        )  # fmt: skip
        assert s.params - s.vision_tower == step["trainable_params"]
        assert parts["weights"] - gathered_layer(s) + parts["trainable_state"] == pytest.approx(step["held"], rel=1e-4)
        estimate = parts["total"] - parts["margin"]
        assert 1.0 <= estimate / step["step_peak"] <= 1.10
